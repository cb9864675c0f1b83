"""`ood-bench masks`: what learned maskers attend to, as one grid of pictures."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from benchmark.cli.common import add_data_root, console, default_device
from benchmark.errors import BenchmarkError

NAME = "masks"
HELP = "Train maskers at each c and class size and draw the masks they give the same OOD images."
EPILOG = """Each row is one trained masker (c, class size); every row shows the same
ood_test images, so rows differ only by what the masker learned. Also prints
mask precision: the share of mask mass on digit pixels, against the share of
pixels that are digit (what an all-ones mask scores). `ood-bench run` keeps
every trained model that has a mask in the cache folder; this command draws
those without training again, and trains (and keeps) only the ones missing.

examples:
  ood-bench masks --protocol quick --out masks.png
  ood-bench masks --protocol standard --variant white --class-sizes 1,8,64 --param c=-1,0,1
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--method", default="masker", help="a method whose model has .mask(x)"
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="parameter values, one row per value (default: the method's sweep)",
    )
    parser.add_argument(
        "--protocol", default="quick", help="protocol name (default: quick)"
    )
    parser.add_argument(
        "--variant", default="black", help="foreground variant (default: black)"
    )
    parser.add_argument(
        "--class-sizes",
        action="append",
        metavar="K[,K...]",
        help="class sizes (default: the protocol's)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the maskers drawn (default: 0)"
    )
    parser.add_argument(
        "--images",
        type=int,
        default=8,
        metavar="N",
        help="OOD images per row (default: 8)",
    )
    parser.add_argument(
        "--out",
        default="masks.png",
        metavar="FILE.png",
        help="where to write the grid (default: masks.png)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="torch device (default: cuda when available, else cpu)",
    )
    add_data_root(parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from benchmark import engine
    from benchmark.compose import get_variant
    from benchmark.figures import mask_gallery
    from benchmark.protocol import get_protocol
    from benchmark.runner import Workspace, parse_int_list
    from benchmark.sources import resolve_data_root

    protocol = get_protocol(args.protocol)
    get_variant(args.variant)
    if not 1 <= args.images <= 32:
        raise BenchmarkError("--images must be between 1 and 32")
    class_sizes = parse_int_list(args.class_sizes, "--class-sizes") or list(
        protocol.class_sizes
    )
    device = args.device or default_device()
    ws = Workspace.load(
        resolve_data_root(args.data_root),
        device=device,
        progress=True,
        download=not args.no_download,
    )
    method = ws.registry.get(args.method)
    grid = ws.registry.parse_params(method, args.param)
    if not hasattr(method.build_model(grid[0]), "mask"):
        raise BenchmarkError(
            f"method {method.name!r} has no mask to draw; try --method masker"
        )

    panels, table = [], Table(title="Mask precision on ood_test")
    for column in (
        "params",
        "class size",
        "ID",
        "OOD",
        "mask mass on digit",
        "digit pixels",
        "mean mask: digit",
        "background",
    ):
        table.add_column(column)
    for params in grid:
        for k in class_sizes:
            cell = ws.splits(protocol, args.variant, k, args.seed)
            tensors = engine.cell_tensors(cell, ws.bank)
            model = _trained(method, params, cell, tensors, protocol, args.seed)
            ood = tensors["ood_test"]
            rows = torch.arange(min(args.images, len(ood)), device=ws.device)
            with torch.no_grad():
                model.eval()
                images = ood.images(rows)
                masks = model.mask(engine.prepare_input(images))
            stats = engine.mask_stats(model, ood)
            label = " ".join(f"{key}={value}" for key, value in params.items())
            panels.append(
                (f"{label}\nk={k}", images[: args.images], masks[: args.images])
            )
            table.add_row(
                label,
                str(k),
                f"{100 * engine.evaluate(model, tensors['id_test']):.1f}",
                f"{100 * engine.evaluate(model, ood):.1f}",
                f"{100 * stats['mask_digit_mass_share']:.1f}%",
                f"{100 * stats['digit_pixel_share']:.1f}%",
                f"{stats['mask_mean_on_digit']:.2f}",
                f"{stats['mask_mean_on_background']:.2f}",
            )
    title = f"{method.name} masks · {protocol.key} · {args.variant} digits · seed {args.seed}"
    path = mask_gallery(panels, Path(args.out), title)
    console.print(table)
    console.print(f"wrote {path}")
    return 0


def _trained(method, params, cell, tensors, protocol, seed):
    """The cell's trained model: the one `ood-bench run` kept, else trained now."""
    import torch

    from benchmark import engine
    from benchmark.runner import model_path, save_model
    from benchmark.store import canonical_params

    device = tensors["train"].label.device
    path = model_path((cell.fingerprint, method.name, canonical_params(params)))
    model = engine.build_model(method, params, seed, device)
    if path.exists():
        model.load_state_dict(torch.load(path, map_location=device))
        return model
    console.print(
        f"training {method.name} {canonical_params(params)} at class size {cell.class_size}"
    )
    outcome = engine.train(method, params, tensors["train"], protocol.budget, seed)
    save_model(outcome.model, path)
    return outcome.model
