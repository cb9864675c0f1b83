"""The leaderboard against a hand-made results table whose figures are worked
out by hand below, and the `results` and `leaderboard` commands end to end."""

from __future__ import annotations

import math
from dataclasses import asdict

import pandas as pd
import pytest
from scipy import stats

from benchmark.cli import main
from benchmark.leaderboard import aggregate, plot, publish, to_markdown
from benchmark.protocol import Budget, Protocol
from benchmark.store import CellRecord, ResultStore, canonical_params

TINY = Protocol(
    name="tiny",
    version=2,
    description="Two class sizes, three seeds: a table small enough to check by hand.",
    class_sizes=(1, 4),
    variants=("black",),
    seeds=(0, 1, 2),
    n_train=100,
    n_val=10,
    n_test=10,
    budget=Budget(epochs=1, batch_size=10, optimizer="adam", lr=1e-3),
)

MASKER = canonical_params({"c": 0.5})
NOISE = canonical_params({"sigma": 0.1})

# OOD accuracy per (class size, seed). masker beats the baseline in every cell
# by 10 to 13 points; noise differs from it by a zero-mean wobble.
OOD = {
    ("baseline", "{}"): {1: [0.30, 0.34, 0.32], 4: [0.50, 0.56, 0.53]},
    ("masker", MASKER): {1: [0.42, 0.44, 0.43], 4: [0.63, 0.67, 0.65]},
    ("noise", NOISE): {1: [0.36, 0.30, 0.33], 4: [0.48, 0.58, 0.53]},
    ("mixup", "{}"): {1: [0.20, 0.22, None], 4: [0.40, 0.44, None]},
}


def fingerprint(variant: str, class_size: int, seed: int) -> str:
    return f"fp-{variant}-{class_size}-{seed}"


def cell(method, params, class_size, seed, ood, **changes) -> dict:
    record = CellRecord(
        protocol="tiny",
        protocol_version=2,
        fingerprint=fingerprint("black", class_size, seed),
        method=method,
        params=params,
        variant="black",
        class_size=class_size,
        seed=seed,
        status="ok",
        error=None,
        id_val_acc=0.975,
        id_test_acc=0.975,
        ood_test_acc=ood,
        conflict_test_acc=0.10,
        train_loss=0.2,
        num_params=61706,
        train_seconds=10.0,
        wall_seconds=11.0,
        images_per_second=100.0,
        device="cpu",
        package_version="0.1.0",
        git_commit=None,
        torch_version="2.4.0",
        method_source="ood-bench 0.1.0",
        started_at="2025-01-01T00:00:00+00:00",
        finished_at="2025-01-01T00:01:00+00:00",
    )
    return {**asdict(record), **changes}


def results_table() -> pd.DataFrame:
    rows = []
    for (method, params), by_size in OOD.items():
        for class_size, values in by_size.items():
            for seed, ood in enumerate(values):
                if ood is not None:
                    rows.append(cell(method, params, class_size, seed, ood))
    # mixup's third seed: diverged at class size 1, failed at class size 4.
    rows.append(
        cell("mixup", "{}", 1, 2, None, status="diverged", error="loss became nan")
    )
    rows.append(
        cell(
            "mixup",
            "{}",
            4,
            2,
            None,
            status="failed",
            error=(
                "RuntimeError: CUDA out of memory\nTraceback (most recent call last):"
            ),
        )
    )
    # Stale: two baseline rows of protocol version 1, and a masker row computed
    # on splits whose fingerprint is no longer the current one.
    rows.append(cell("baseline", "{}", 1, 0, 0.99, protocol_version=1))
    rows.append(cell("baseline", "{}", 4, 0, 0.99, protocol_version=1))
    rows.append(cell("masker", MASKER, 1, 0, 0.99, fingerprint="fp-from-old-splits"))
    # Another protocol in the same file is simply not part of this leaderboard.
    rows.append(
        cell("baseline", "{}", 1, 0, 0.01, protocol="quick", protocol_version=1)
    )
    return pd.DataFrame(rows)


EXPECTED_FINGERPRINTS = {
    ("black", c, s): fingerprint("black", c, s) for c in (1, 4) for s in (0, 1, 2)
}


@pytest.fixture
def board():
    return aggregate(results_table(), TINY, expected_fingerprints=EXPECTED_FINGERPRINTS)


def row_of(board, method):
    table = board.tables["black"]
    return table[table["method"] == method].iloc[0]


def test_means_stds_and_ranking(board):
    table = board.tables["black"]
    assert list(table["method"]) == ["masker", "noise", "baseline", "mixup"]
    assert list(table["rank"]) == [1, 2, 3, 4]

    masker = row_of(board, "masker")
    assert masker["ood_1"] == pytest.approx(0.43)  # (.42 + .44 + .43) / 3
    assert masker["ood_1_std"] == pytest.approx(0.01)
    assert masker["ood_4"] == pytest.approx(0.65)
    assert masker["ood_4_std"] == pytest.approx(0.02)
    assert masker["ood_mean"] == pytest.approx(0.54)  # (.43 + .65) / 2
    assert masker["id_mean"] == pytest.approx(0.975)
    assert masker["gap"] == pytest.approx(0.435)
    assert masker["conflict_mean"] == pytest.approx(0.10)
    assert (masker["seeds_done"], masker["seeds_expected"]) == (3, 3)

    baseline = row_of(board, "baseline")
    assert baseline["ood_1"] == pytest.approx(0.32)
    assert baseline["ood_1_std"] == pytest.approx(0.02)
    assert baseline["ood_4"] == pytest.approx(0.53)
    assert baseline["ood_4_std"] == pytest.approx(0.03)
    assert baseline["ood_mean"] == pytest.approx(0.425)

    noise = row_of(board, "noise")
    assert noise["ood_mean"] == pytest.approx(0.43)  # (.33 + .53) / 2

    mixup = row_of(board, "mixup")  # two finished seeds only
    assert mixup["ood_1"] == pytest.approx(0.21)
    assert mixup["ood_1_std"] == pytest.approx(math.sqrt(2) * 0.01)
    assert mixup["ood_mean"] == pytest.approx(0.315)
    assert (mixup["seeds_done"], mixup["seeds_expected"]) == (2, 3)


def test_significance_is_paired_by_cell(board):
    masker = row_of(board, "masker")
    diffs = [0.12, 0.10, 0.11, 0.13, 0.11, 0.12]  # masker - baseline, cell by cell
    mean = sum(diffs) / 6
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 5)
    half = stats.t.ppf(0.975, 5) * sd / math.sqrt(6)
    assert masker["n_pairs"] == 6
    assert masker["diff_mean"] == pytest.approx(0.115)
    assert masker["diff_low"] == pytest.approx(mean - half)
    assert masker["diff_high"] == pytest.approx(mean + half)
    assert masker["p_value"] < 0.001 and masker["significant"]

    noise = row_of(board, "noise")  # differences .06 -.04 .01 -.02 .02 0
    assert noise["n_pairs"] == 6
    assert noise["diff_mean"] == pytest.approx(0.005)
    assert noise["p_value"] > 0.5 and not noise["significant"]

    assert row_of(board, "mixup")["n_pairs"] == 4
    assert bool(row_of(board, "baseline")["is_baseline"])


def test_stale_rows_are_left_out_and_reported(board):
    stale = {(g.method, g.protocol, g.rows): g.reason for g in board.stale}
    assert set(stale) == {("baseline", "tiny@v1", 2), ("masker", "tiny@v2", 1)}
    assert "another version" in stale[("baseline", "tiny@v1", 2)]
    assert "fingerprint differs" in stale[("masker", "tiny@v2", 1)]
    assert (board.rows["ood_test_acc"].dropna() < 0.9).all()
    assert set(board.rows["protocol"]) == {"tiny"}


def test_superseded_duplicate_is_stale():
    df = results_table()
    newer = cell("baseline", "{}", 1, 0, 0.31, fingerprint="fp-other")
    newer["finished_at"] = "2025-02-01T00:00:00+00:00"
    board = aggregate(pd.concat([df, pd.DataFrame([newer])]), TINY)
    reasons = {g.reason for g in board.stale if g.method == "baseline"}
    assert any("superseded" in r for r in reasons)
    assert row_of(board, "baseline")["ood_1"] == pytest.approx((0.31 + 0.34 + 0.32) / 3)


def test_failures_are_listed(board):
    failures = board.failures
    assert failures[["method", "class_size", "seed", "status"]].values.tolist() == [
        ["mixup", 1, 2, "diverged"],
        ["mixup", 4, 2, "failed"],
    ]
    assert failures["error"].tolist() == [
        "loss became nan",
        "RuntimeError: CUDA out of memory",
    ]


def markdown_rows(text: str) -> dict[str, list[str]]:
    """Table lines of a Markdown page, keyed by their second cell."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|--"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[1], cells)
    return rows


def test_markdown_cells(board):
    text = to_markdown(board, {"black": "black.png"})
    assert text.startswith("# Leaderboard: tiny@v2\n")
    assert "## Black digits (foreground 0)" in text
    assert "![OOD and ID accuracy vs class size, black](black.png)" in text

    rows = markdown_rows(text)
    assert rows["Method"] == [
        "Rank", "Method", "Params", "OOD @1", "OOD @4", "Mean OOD", "ID", "Gap",
        "Conflict", "Seeds", "Params (#)", "Time/cell", "vs baseline",
    ]  # fmt: skip
    masker = rows["masker"]
    assert masker[:12] == [
        "1", "masker", "c=0.5", "43.0 ± 1.0", "65.0 ± 2.0", "54.0", "97.5",
        "43.5", "10.0", "3/3", "61,706", "10.0 s",
    ]  # fmt: skip
    low, high = 100 * row_of(board, "masker")[["diff_low", "diff_high"]]
    assert masker[12] == f"+11.5 [{low:+.1f}, {high:+.1f}] *"
    assert rows["noise"][2] == "sigma=0.1"
    assert rows["noise"][12].startswith("+0.5 [") and not rows["noise"][12].endswith(
        "*"
    )
    assert rows["baseline"][:3] == ["3", "baseline", "defaults"]
    assert rows["baseline"][12] == "baseline"
    assert rows["mixup"][9] == "2/3"

    assert "## Failed and diverged cells" in text
    failures = markdown_rows(text.split("## Failed")[1])
    failure = failures["defaults"]  # keyed by the second cell, Params
    assert failure == [
        "mixup",
        "defaults",
        "black",
        "1",
        "2",
        "diverged",
        "loss became nan",
    ]
    assert "- baseline: 2 rows (tiny@v1), stored under another version" in text
    assert "- masker: 1 row (tiny@v2), split fingerprint differs" in text
    assert "paired t-test" in text


def test_fewer_than_two_pairs_is_not_tested():
    one = Protocol(
        **{**asdict(TINY), "class_sizes": (1,), "seeds": (0,), "budget": TINY.budget}
    )
    df = pd.DataFrame(
        [cell("baseline", "{}", 1, 0, 0.3), cell("masker", MASKER, 1, 0, 0.9)]
    )
    board = aggregate(df, one)
    assert row_of(board, "masker")["n_pairs"] == 1
    assert markdown_rows(to_markdown(board))["masker"][-1] == "n/a"


def test_protocol_is_inferred_and_mixing_refused():
    df = results_table()
    with pytest.raises(Exception, match="several protocols"):
        aggregate(df)


def test_plots_and_publish(tmp_path, board):
    figures = plot(board, tmp_path / "figs")
    assert set(figures) == {"black"}
    assert figures["black"].stat().st_size > 1000

    out = tmp_path / "published"
    published = publish(results_table(), TINY, out)
    readme = (out / "README.md").read_text()
    assert "(black.png)" in readme
    assert (out / "black.png").stat().st_size > 1000
    csv = pd.read_csv(out / "results.csv")
    assert (
        len(csv) == len(published.rows) == 24 - 2 + 2
    )  # 22 ok, 2 failed/diverged, no stale


def test_results_and_leaderboard_commands(tmp_path, capsys):
    path = tmp_path / "results.sqlite"
    df = results_table()
    df = df[(df["protocol"] == "tiny") & (df["protocol_version"] == 2)]
    smoke = df.assign(protocol="smoke", protocol_version=1, variant="black")
    smoke = smoke[smoke["class_size"] == 1].assign(class_size=2)
    with ResultStore(path) as store:
        for row in smoke.to_dict("records"):
            store.put(
                CellRecord(**{k: (None if pd.isna(v) else v) for k, v in row.items()})
            )

    assert main(["results", "--results", str(path)]) == 0
    out = capsys.readouterr().out
    assert "masker" in out and "smoke@v1" in out

    assert main(["results", "--results", str(path), "--csv", "-"]) == 0
    assert (
        capsys.readouterr().out.splitlines()[0].startswith("protocol,protocol_version,")
    )

    pub = tmp_path / "board"
    assert main(["leaderboard", "--results", str(path), "--out", str(pub)]) == 0
    out = capsys.readouterr().out
    assert "Leaderboard: smoke@v1" in out
    assert (pub / "README.md").exists() and (pub / "results.csv").exists()


def test_missing_results_file_is_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "none.sqlite"
    assert main(["leaderboard", "--results", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "no results file" in err and len(err.strip().splitlines()) == 1
    assert not missing.exists()
    assert main(["leaderboard", "--results", str(missing), "--protocol", "nope"]) == 2


def test_two_parameter_sweeps_get_heatmaps(tmp_path):
    rows = []
    for fraction in (0.1, 0.5):
        for intensity in (0.5, 1.0):
            params = canonical_params({"fraction": fraction, "intensity": intensity})
            for seed in (0, 1, 2):
                rows.append(cell("noise", params, 4, seed, 0.3 + fraction * intensity))
                rows.append(cell("noise", params, 1, seed, 0.2))
    for seed in (0, 1, 2):
        for k in (1, 4):
            rows.append(cell("baseline", "{}", k, seed, 0.3))
    lb = publish(pd.DataFrame(rows), TINY, tmp_path)
    written = sorted(p.name for p in tmp_path.glob("noise-*.png"))
    assert written == ["noise-black-k4.png"]  # without 16, the upper median of (1, 4)
    readme = (tmp_path / "README.md").read_text()
    assert "## Parameter grids" in readme and "noise-black-k4.png" in readme
    assert (tmp_path / "noise-black-k4.png").stat().st_size > 10_000
    from benchmark.leaderboard import heatmaps

    assert list(heatmaps(lb, tmp_path / "k1", class_size=1)) == [("noise", "black")]
    assert (tmp_path / "k1" / "noise-black-k1.png").exists()


def test_published_page_carries_notes_under_the_title(tmp_path, capsys):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        row = cell("baseline", "{}", 2, 0, 0.3, protocol="smoke", protocol_version=1)
        store.put(CellRecord(**row))
    notes = tmp_path / "notes.md"
    notes.write_text("Produced by `ood-bench run` on a 2-core machine in 25 min.\n")
    out = tmp_path / "board"
    argv = [
        "leaderboard",
        "--results",
        str(path),
        "--out",
        str(out),
        "--notes",
        str(notes),
    ]
    assert main([*argv, "--data-root", str(tmp_path / "no-data")]) == 0
    page = (out / "README.md").read_text().splitlines()
    assert page[0] == "# Leaderboard: smoke@v1"
    assert "Produced by `ood-bench run` on a 2-core machine in 25 min." in page[:6]

    assert main([*argv[:-1], str(tmp_path / "missing.md")]) == 2
    assert "cannot read --notes" in capsys.readouterr().err


def test_conflict_accuracy_and_mask_precision_per_class_size(tmp_path):
    # masker rows carry mask metrics; conflict accuracy varies with class size
    share = {(1, 0): 0.20, (1, 1): 0.30, (1, 2): 0.40, (4, 0): 0.5, (4, 1): 0.7}
    rows = []
    for (class_size, seed), digit_mass in share.items():
        metrics = canonical_params(
            {"mask_digit_mass_share": digit_mass, "digit_pixel_share": 0.19}
        )
        rows.append(
            cell("masker", MASKER, class_size, seed, 0.5, metrics=metrics)
            | {"conflict_test_acc": 0.1 * class_size + 0.01 * seed}
        )
    for class_size in (1, 4):
        for seed in (0, 1, 2):
            rows.append(cell("baseline", "{}", class_size, seed, 0.4))
    out = tmp_path / "published"
    publish(pd.DataFrame(rows), TINY, out)
    readme = (out / "README.md").read_text()
    assert (out / "conflict.png").stat().st_size > 1000
    assert (out / "mask-precision.png").stat().st_size > 1000

    mask_section = readme.split("## Mask precision")[1]
    # mean ± sample std of (0.2, 0.3, 0.4) and of (0.5, 0.7), in %
    assert "| masker | c=0.5 | 30.0 ± 10.0 | 60.0 ± 14.1 |" in " ".join(
        mask_section.split()
    )
    assert "digit pixels" in mask_section and "19.0" in mask_section
    conflict = readme.split("## Shortcut reliance")[1].split("## Mask precision")[0]
    # masker conflict: seeds 0,1,2 at class size 1 -> 10, 11, 12 %; 4 -> 40, 41 %
    squeezed = " ".join(conflict.split())
    assert "| masker | c=0.5 | 11.0 ± 1.0 | 40.5 ± 0.7 |" in squeezed
    assert "| baseline | defaults | 10.0 ± 0.0 | 10.0 ± 0.0 |" in squeezed


def test_class_sizes_rank_configurations_run_at_some_of_them(capsys, tmp_path):
    # "short" ran class size 1 only: unranked on the whole protocol, ranked on
    # class size 1, where its mean is its accuracy there.
    rows = [
        cell("baseline", "{}", c, s, 0.3 + 0.2 * (c == 4))
        for c in (1, 4)
        for s in (0, 1, 2)
    ]
    rows += [cell("short", "{}", 1, s, 0.40 + 0.01 * s) for s in (0, 1, 2)]
    df = pd.DataFrame(rows)

    whole = aggregate(df, TINY)
    assert math.isnan(row_of(whole, "short")["ood_mean"])
    assert list(whole.tables["black"]["rank"].isna()) == [False, True]

    chosen = aggregate(df, TINY, class_sizes=[1])
    assert chosen.class_sizes == (1,)
    assert list(chosen.tables["black"]["method"]) == ["short", "baseline"]
    assert list(chosen.tables["black"]["rank"]) == [1, 2]
    assert row_of(chosen, "short")["ood_mean"] == pytest.approx(0.41)
    assert row_of(chosen, "baseline")["ood_mean"] == pytest.approx(0.30)
    assert row_of(chosen, "short")["seeds_done"] == 3
    page = to_markdown(chosen)
    assert "OOD @4" not in page and "Ranked on class sizes 1 only" in page

    with pytest.raises(Exception, match="class size 3 is not in tiny@v2"):
        aggregate(df, TINY, class_sizes=[1, 3])


def test_leaderboard_command_takes_class_sizes(tmp_path, capsys):
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        for c in (2, 8):
            for s in (0, 1):
                store.put(
                    CellRecord(
                        **cell(
                            "baseline",
                            "{}",
                            c,
                            s,
                            0.3,
                            protocol="smoke",
                            protocol_version=1,
                            fingerprint=f"fp-{c}-{s}",
                        )
                    )
                )
    argv = [
        "leaderboard",
        "--results",
        str(path),
        "--no-download",
        "--data-root",
        str(tmp_path),
    ]
    assert main([*argv, "--class-sizes", "8"]) == 0
    out = capsys.readouterr().out
    assert "OOD @8" in out and "OOD @2" not in out
    assert main([*argv, "--class-sizes", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "class size 5 is not in smoke@v1" in err


def test_configurations_keep_their_order_and_colour_everywhere(tmp_path):
    # Parameter values in text order would read -0.5, -1.0, 0.5; by value they
    # read -1.0, -0.5, 0.5. The white variant lacks c=-0.5.
    values = (0.5, -0.5, -1.0)
    rows = []
    for variant in ("black", "white"):
        for c in (1, 4):
            for s in (0, 1):
                rows.append(cell("baseline", "{}", c, s, 0.3, variant=variant))
                for v in values:
                    if variant == "white" and v == -0.5:
                        continue
                    params = canonical_params({"c": v})
                    metrics = canonical_params(
                        {
                            "mask_digit_mass_share": 0.1 - v / 10,
                            "mask_mean_on_background": 0.25 * c,
                        }
                    )
                    rows.append(
                        cell(
                            "masker",
                            params,
                            c,
                            s,
                            0.3,
                            variant=variant,
                            metrics=metrics,
                        )
                    )
    two = Protocol(
        **{**asdict(TINY), "variants": ("black", "white"), "budget": TINY.budget}
    )
    board = aggregate(pd.DataFrame(rows), two)
    order = [(m, json_value(p)) for m, p in board.configurations()]
    assert order == [
        ("baseline", None),
        ("masker", -1.0),
        ("masker", -0.5),
        ("masker", 0.5),
    ]
    # All tie on OOD accuracy, so every row is in reading order.
    black = board.tables["black"]
    assert [json_value(p) for p in black["params"]] == [None, -1.0, -0.5, 0.5]

    colours = board.colours()
    assert len(set(colours.values())) == 4
    publish(pd.DataFrame(rows), two, tmp_path)
    page = " ".join((tmp_path / "README.md").read_text().split())
    background = page.split("## Mask on background pixels")[1]
    assert "| masker | c=-1.0 | 25.0 ± 0.0 | 100.0 ± 0.0 |" in background
    assert (tmp_path / "mask-background.png").stat().st_size > 1000
    # The mask-precision legend names each configuration once, across panels.
    from benchmark.leaderboard import per_class_size

    white = per_class_size(board, "white", "mask_digit_mass_share")
    assert [json_value(p) for p in white["params"]] == [-1.0, 0.5]


def json_value(params: str):
    import json

    values = json.loads(params)
    return values.get("c") if values else None


def test_error_bars_stop_at_0_and_100_percent():
    import matplotlib.pyplot as plt
    import numpy as np

    from benchmark.leaderboard import _draw_curve

    fig, ax = plt.subplots()
    # one collapsed seed: mean 0.70, std 0.52 would draw a bar up to 122%
    _draw_curve(ax, np.array([1, 2]), [0.995, 0.70], [0.01, 0.52], "C0", "m")
    bars = ax.containers[0].lines[2][0].get_segments()
    tops = [max(y for _, y in segment) for segment in bars]
    bottoms = [min(y for _, y in segment) for segment in bars]
    plt.close(fig)
    assert max(tops) == pytest.approx(100.0)
    assert bottoms[1] == pytest.approx(18.0)  # the lower side keeps its std
