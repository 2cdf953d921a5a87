"""The README's quick start runs and prints what it promises."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_opens_with_the_two_commands():
    first_block = re.search(r"```sh\n(.*?)```", README.read_text(), re.S).group(1)
    assert [line.split()[:2] for line in first_block.strip().splitlines()] == [
        ["make", "demo"],
        ["make", "test"],
    ]


def test_quick_start_runs(capsys):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "SEISResult(cross-fitted, 5 folds" in out
    held_out = float(out.strip().splitlines()[-1])
    assert 0.5 < held_out <= 1.0  # rot90 keeps the information


# ------------------------------------------------------------------ installing


ROOT = README.parent
QUICKSTART = ROOT / "docs" / "quickstart.rst"


def _project():
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pip_installs(text):
    """The targets of every ``pip install`` in the shell blocks of a README or an .rst page."""
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    blocks += re.findall(r"\.\. code-block:: sh\n\n((?:   .*\n|\n)+)", text)
    targets = []
    for line in "\n".join(blocks).splitlines():
        words = line.split("#")[0].split()
        if words[:2] == ["pip", "install"]:
            targets += [w.strip("'\"") for w in words[2:] if not w.startswith("-")][:1]
    return targets


@pytest.mark.parametrize("page", [README, QUICKSTART], ids=lambda p: p.name)
def test_the_install_commands_install_from_a_checkout_or_a_built_wheel(page):
    """The package is not on PyPI: each install names a path, with extras the project has."""
    project = _project()
    extras = set(project["optional-dependencies"])
    wheel = f"dist/{project['name'].replace('-', '_')}-{project['version']}-py3-none-any.whl"
    targets = _pip_installs(page.read_text())
    assert any(t.split("[")[0] == "." for t in targets), targets
    assert any(t.split("[")[0] == wheel for t in targets), (wheel, targets)
    for target in targets:
        path, _, tail = target.partition("[")
        assert path in (".", wheel), f"{page.name}: pip install {target} is not a checkout"
        assert set(filter(None, tail.rstrip("]").split(","))) <= extras, target


def _pins(name):
    pins = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            package, _, version = line.partition("==")
            pins[_canonical(package)] = version
    return pins


def _canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_extras(constraints):
    """The extras the Makefile installs beside ``-c requirements/<constraints>``."""
    makefile = (ROOT / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+) [:?]?= (.*)$", makefile, re.M))
    for name, value in variables.items():
        makefile = makefile.replace(f"$({name})", value)
    line = next(ln for ln in makefile.splitlines() if f"-c requirements/{constraints}" in ln)
    return re.search(r'-e "\.\[([a-z,]+)\]"', line).group(1).split(",")


@pytest.mark.parametrize("constraints", ["constraints.txt", "oldest.txt", "zoo.txt"])
def test_every_environment_pins_what_its_extras_need_within_their_bounds(constraints):
    """Each pinned environment (make setup, test-oldest, setup-zoo) installs, and with
    the versions it pins: a requirement of an extra it installs is pinned (the oldest
    environment: the core and the torch, onnx and dask extras; its dev tools float),
    and every pin lies within the bound pyproject.toml states."""
    from packaging.requirements import Requirement

    project = _project()
    pins = _pins(constraints)
    extras = _installed_extras(constraints)
    if constraints == "oldest.txt":
        must_pin = ["torch", "onnx", "dask"]
        assert set(must_pin) <= set(extras)
    else:
        must_pin = extras
    requirements = [(None, r) for r in project["dependencies"]]
    requirements += [(e, r) for e in extras for r in project["optional-dependencies"][e]]
    for extra, text in requirements:
        requirement = Requirement(text)
        name = _canonical(requirement.name)
        if name == "seis-sklearn":
            continue
        if extra is None or extra in must_pin:
            assert name in pins, f"requirements/{constraints} does not pin {name} ({extra})"
        if name in pins:
            version = pins[name].split("+")[0]
            assert requirement.specifier.contains(version, prereleases=True), (
                f"requirements/{constraints} pins {name}=={pins[name]} outside {text}"
            )


def test_the_onnx_extra_brings_what_torch_onnx_export_needs():
    """torch.onnx.export's default (dynamo) exporter imports onnxscript and onnx_ir."""
    from packaging.requirements import Requirement

    names = {_canonical(Requirement(r).name) for r in _project()["optional-dependencies"]["onnx"]}
    assert {"onnx", "onnxruntime", "onnxscript", "onnx-ir"} <= names


def test_the_zoo_environment_has_a_target_that_runs_no_test():
    makefile = (ROOT / "Makefile").read_text()
    rules = dict(re.findall(r"^([\w.$()/-]+):(.*)$", makefile, re.M))
    assert "setup-zoo" in rules["test-zoo"].split()
    assert rules["setup-zoo"].split() == ["$(ZOO_VENV)/.installed-stamp"]
    recipe = re.search(r"^setup-zoo:.*\n((?:\t.*\n)*)", makefile, re.M).group(1)
    assert "pytest" not in recipe
    assert "setup-zoo" in re.search(r"^\.PHONY:(.*)$", makefile, re.M).group(1).split()
