"""The commands that show the benchmark before anything runs: help, protocols, samples."""

from __future__ import annotations

import pytest

from benchmark.cli import COMMANDS, build_parser, main
from benchmark.protocol import PROTOCOLS


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out.lower() and f"ood-bench {command}" in out


def test_top_level_help_lists_every_command(capsys):
    build_parser().print_help()
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


def test_protocols_lists_every_protocol(capsys):
    assert main(["protocols"]) == 0
    out = capsys.readouterr().out
    for name in PROTOCOLS:
        assert name in out


def test_unknown_protocol_is_one_line_and_exit_2(capsys):
    assert main(["protocols", "standart"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean 'standard'" in err


def test_unknown_flag_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--method", "baseline", "--sedes", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--sedes" in err


@pytest.mark.realdata
def test_protocol_shows_its_fingerprints(data_root, real_workspace, capsys):
    assert main(["protocols", "quick", "--data-root", str(data_root)]) == 0
    out = capsys.readouterr().out
    quick = PROTOCOLS["quick"]
    for k in quick.class_sizes:
        expected = real_workspace.splits(quick, "black", k, 0).fingerprint
        assert expected in out


@pytest.mark.realdata
def test_samples_writes_a_png(tmp_path, data_root, capsys):
    out = tmp_path / "grid.png"
    status = main(
        [
            "samples",
            "--protocol",
            "quick",
            "--variant",
            "white",
            "--class-size",
            "4",
            "--out",
            str(out),
            "--data-root",
            str(data_root),
        ]
    )
    assert status == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 20_000  # a real grid of 40 images, not an empty canvas


@pytest.mark.realdata
def test_samples_rejects_a_class_size_too_large(tmp_path, data_root, capsys):
    status = main(
        [
            "samples",
            "--class-size",
            "6000",
            "--out",
            str(tmp_path / "x.png"),
            "--data-root",
            str(data_root),
        ]
    )
    assert status == 2
    assert "class size 6000 is out of range" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
