"""Every bad input of every command, read off the CLI itself: one line on stderr naming the problem and the fix,
exit code 2, no traceback, nothing written.

The table is built from `raysft.cli.app` (every command, sub-commands included, and every option), so an option or
command added later is covered without touching this file: a word where a number belongs, a number outside an
option's range, an unknown option, an option without its value, a missing argument, and, for every command that
reads a space, a config file that is not UTF-8 text or not a mapping."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import typer.main

from raysft.cli import app, main

NOT_UTF8 = b"name: smoke\ntask: sa\n# caf\xe9 in Latin-1\nmodel: \xff\xfe\n"


def _commands(group=None, path=()):
    """(path, command) for every leaf command of the CLI."""
    group = group if group is not None else typer.main.get_command(app)
    for name, cmd in sorted(getattr(group, "commands", {}).items()):
        if getattr(cmd, "commands", None):
            yield from _commands(cmd, path + (name,))
        else:
            yield path + (name,), cmd


def _is_option(param) -> bool:
    return bool(param.opts) and param.opts[0].startswith("-")


def _numeric(param) -> str | None:
    """'int' or 'float' when the parameter takes a number, from its annotation (typer) or its click type."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if annotation is None:
        name = getattr(getattr(param, "type", None), "name", "")
        return "int" if name.startswith("integer") else "float" if name.startswith("float") else None
    args = set(typing.get_args(annotation)) or {annotation}
    if bool in args:
        return None
    return "int" if int in args else "float" if float in args else None


def _placeholder(param, root: Path) -> list[str]:
    """A well-typed value for a required parameter, so that only the parameter under test is wrong."""
    value = "1" if _numeric(param) else "smoke" if param.name == "space" else str(root / f"given-{param.name}")
    return [param.opts[0], value] if _is_option(param) else [value]


def _required(cmd, root: Path, skip=None) -> list[str]:
    args = []
    for p in cmd.params:
        if p.required and p is not skip:
            args += _placeholder(p, root)
    return args


def _cases():
    """(id, builder, expected fragment); a builder maps the scratch root to argv (the root holds the input files)."""
    cases = []
    for path, cmd in _commands():
        cmd_name = " ".join(path)
        for p in cmd.params:
            kind = _numeric(p)
            if kind is None:
                continue
            label = p.opts[0] if _is_option(p) else p.name

            def bad(root, path=path, cmd=cmd, p=p, value="many"):
                given = [p.opts[0], value] if _is_option(p) else [value]
                return [*path, *_required(cmd, root, skip=p), *given]

            cases.append((f"{cmd_name} {label} word", bad, f"'many' is not a {'whole number' if kind == 'int' else 'number'}"))
            if kind == "int":
                cases.append((f"{cmd_name} {label} fraction",
                              lambda root, bad=bad: bad(root, value="2.5"), "is not a whole number"))
            for bound, step in (("min", -1), ("max", +1)):
                limit = getattr(p, bound, None)
                if limit is not None:
                    value = str(limit + step if kind == "int" else limit + step * 0.5)
                    cases.append((f"{cmd_name} {label} {bound}", lambda root, bad=bad, value=value: bad(root, value=value),
                                  "is out of range"))
        cases.append((f"{cmd_name} unknown option", lambda root, path=path, cmd=cmd: [*path, *_required(cmd, root), "--no-such-option"],
                      "No such option: --no-such-option"))
        for p in cmd.params:
            if _is_option(p) and not p.is_flag and not p.required:
                cases.append((f"{cmd_name} {p.opts[0]} without value",
                              lambda root, path=path, cmd=cmd, p=p: [*path, *_required(cmd, root), p.opts[0]],
                              f"{p.opts[0]}' requires an argument"))
        if any(p.required for p in cmd.params):
            cases.append((f"{cmd_name} missing argument", lambda root, path=path: [*path], "Missing"))
        if any(p.name == "space" for p in cmd.params):
            space = next(p for p in cmd.params if p.name == "space")

            def with_space(root, name, path=path, cmd=cmd, space=space):
                return [*path, *_required(cmd, root, skip=space), str(root / "in" / name)]

            cases.append((f"{cmd_name} space not UTF-8", lambda root, f=with_space: f(root, "latin1.yaml"),
                          "is not UTF-8 text (byte 0xe9"))
            cases.append((f"{cmd_name} space a YAML list", lambda root, f=with_space: f(root, "list.yaml") + ["--set", "dense.lr=1"],
                          "holds a YAML list, not a mapping"))
    return cases


CASES = _cases()


def test_the_table_covers_every_command_and_typed_option():
    """The table is read off the CLI: every command is in it, and so is every option that takes a number."""
    commands = {" ".join(path) for path, _ in _commands()}
    assert {"train", "eval", "lang", "tune", "compare", "export", "apply", "ui", "import-sft", "doctor"} <= commands
    ids = [case_id for case_id, _, _ in CASES]
    for command in commands:
        assert any(i.startswith(command + " ") for i in ids), command
    numeric = [(" ".join(path), p.opts[0]) for path, cmd in _commands() for p in cmd.params if _numeric(p)]
    assert ("compare", "--top") in numeric and ("doctor", "--timeout") in numeric and ("tune", "--trials") in numeric
    for command, opt in numeric:
        assert f"{command} {opt} word" in ids


@pytest.mark.parametrize("case_id,build,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(case_id, build, expected, tmp_path, monkeypatch, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "latin1.yaml").write_bytes(NOT_UTF8)
    (inputs / "list.yaml").write_text("- name: smoke\n- task: sa\n")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("RAYSFT_SFT_STORE", str(tmp_path / "store"))
    argv = build(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    assert exc.value.code == 2, (argv, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, (argv, err)
    assert lines[0].startswith("error: ") and expected in lines[0], (argv, err)
    assert "Traceback" not in out + err
    assert "help" in lines[0] or ":" in lines[0].removeprefix("error: ")  # names a fix (the help, or what to do)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "in"], argv  # nothing written beside the inputs
    assert not any(cwd.iterdir()), argv
