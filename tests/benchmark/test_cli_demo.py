"""`bertsilicon demo` (what `make demo` runs): the real MiniLM, every provider's row, and the C++ kernels line."""
import re

import torch

from bertsilicon import cli
from bertsilicon.backends import registry, routing


def test_demo_prints_every_provider_and_the_cpu_kernels(capsys):
    threads = torch.get_num_threads()
    try:
        assert cli.main(["demo", "--sentences", "8", "--batch-size", "4", "--seq-len", "32", "--rounds", "2",
                         "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    row = re.compile(r"^([^\d\n]+?)\s+(fp32|bf16|fp16|int8)\s+[\d.]+\s+[\d.]+-[\d.]+\s+[\d.]+x\s+([\d.]+)\s+[\d.]+\s+ok$",
                     re.M)
    rows = {(m.group(1).strip(), m.group(2)): float(m.group(3)) for m in row.finditer(out)}  # -> mean cosine
    for precision in ("fp32", "bf16", "fp16", "int8"):
        assert ("bertsilicon", precision) in rows, out
    assert rows[("HF torch SDPA", "fp32")] == 1.0
    assert rows[("bertsilicon", "fp32")] > 0.99999 and rows[("bertsilicon", "int8")] > 0.995  # mean cosine
    if registry.load("cpu") is None:  # the C++ backend is built: each precision names its kernels
        from bertsilicon.backends import cpu as _cpu

        for precision in ("fp32", "bf16", "fp16", "int8"):
            assert re.search(rf"^  {precision}: {re.escape(_cpu.kernel_path())} path, ", out, re.M), out


def test_cli_version_help_defaults_and_one_line_errors(capsys):
    import pytest

    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("bertsilicon ")
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():  # every option of every subcommand says what it is (help shows defaults)
        silent = [a.option_strings[-1] for a in sub._actions if a.option_strings and not a.help]
        assert not silent, f"{name}: options without help text: {silent}"
    assert "(default: 8)" in commands["demo"].format_help()
    # a user's mistake: one line, exit status 2, no traceback; --debug shows it
    assert cli.main(["demo", "--batch-size", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("bertsilicon demo: error: --batch-size must be at least 1, got 0 (--debug shows the traceback)")
    with pytest.raises(ValueError, match="--batch-size must be at least 1"):
        cli.main(["--debug", "demo", "--batch-size", "0"])
    assert cli.main(["demo", "--texts", "/nonexistent/texts.txt", "--sentences", "2"]) == 2
    assert "--texts /nonexistent/texts.txt: no such file" in capsys.readouterr().err


def test_demo_skips_what_this_cpu_only_emulates(monkeypatch):
    from bertsilicon import demo

    monkeypatch.setattr(routing, "native_bf16_gemm", lambda device, backend: False)
    rows = {(name, p): skip for name, p, _, skip in demo.providers(torch.nn.Linear(2, 2), all_providers=False)}
    assert rows[("HF torch SDPA", "bf16")].startswith("bf16 is emulated by torch on this CPU")
    assert all(skip is None for key, skip in rows.items() if key != ("HF torch SDPA", "bf16"))
    assert all(skip is None for *_, skip in demo.providers(torch.nn.Linear(2, 2), all_providers=True))
