"""The documentation runs (issue 10 §3, issue 17 §4): README.md and every page of docs/.

Python: every ```python block of docs/python_api.md runs, the blocks in order, each in its own
namespace.

CI: the ``wnconvert`` steps of the README's GitHub Actions example run (exit 0, reports written).

Console: every ```console block of README.md and docs/*.md runs. The conventions the pages
follow:

* ``$ `` starts a command; a line ending in ``\\`` continues on the next one. ``# ...`` after a
  command is a comment. Every other line, up to the next ``$ ``, is what the command prints
  (stdout and stderr as a terminal shows them both).
* ``$ wnconvert ...`` runs in-process through typer's CliRunner.
* A page runs top to bottom in one folder holding a copy of ``fixtures/``, the files the page
  assumes a user already has (made here by ``USER_FILES``: only those the page names), and what
  its earlier commands wrote. Python blocks run the same way (one folder per page).
* Exit code: 0, unless the command is followed by ``$ echo $?``, whose output line is the code
  the command must exit with (``wnconvert check vocoder.onnx`` then ``$ echo $?`` then ``1``).
* Output lines are expectations: each must be a line of the command's output, compared with
  runs of whitespace collapsed. Lines that cannot be the same from run to run are not compared
  (``_SKIPPED``): table borders, lines elided with ``...``, and rounding-level differences (a
  number in e-notation below 1e-5: ``1.01e-07`` depends on the CPU's float kernels). Values
  that vary inside a line that matters are masked (``_MASKED``): durations (``0.56 s``), sizes
  (``41.6 KB``: they follow torch's serialization) and paths under ``/tmp``.
* A block that cannot run here is preceded by ``<!-- not-run: REASON -->`` (needs CUDA, installs
  packages...). Nothing else is skipped: a command other than ``wnconvert`` or ``echo $?`` in a
  block without that marker fails the test, and the not-run blocks are listed in
  ``NOT_RUN`` so that a new one is a visible change to this file.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest
import torch
from typer.testing import CliRunner

from wnconvert.cli import app

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PYTHON_API = REPO / "docs" / "python_api.md"

# (page, first command of the block): the blocks marked <!-- not-run: ... -->.
NOT_RUN = {
    ("README.md", "make demo"),
    ("docs/performance.md", "make bench"),
    ("docs/export_verify.md",
     "wnconvert verify folded.onnx --reference original.onnx --provider cpu --provider cuda"),
    ("README.md",
     "polygraphy run generator.onnx --trt --trt-min-shapes mel:[1,16,64] --trt-opt-shapes "
     "mel:[1,16,64] --trt-max-shapes mel:[1,16,128] --load-inputs inputs.json --load-outputs "
     "outputs.json"),
}


def _page_name(page: Path) -> str:
    return str(page.relative_to(REPO))


# ---------------------------------------------------------------------------------------------
# Parsing the pages


@dataclass
class Command:
    line: str  # continuation lines joined, comment kept
    output: list[str] = field(default_factory=list)
    exit_code: int = 0

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.line, comments=True)


@dataclass
class Block:
    page: str
    number: int  # 1-based, among the page's console blocks
    commands: list[Command]
    not_run: str | None  # the reason given by <!-- not-run: REASON -->


_FENCE = re.compile(r"^(?:<!-- not-run: (?P<reason>.+?) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)^```",
                    re.S | re.M)


def _blocks(text: str, lang: str) -> list[tuple[str, str | None]]:
    return [(m["body"], m["reason"]) for m in _FENCE.finditer(text) if m["lang"] == lang]


def _parse_console(body: str) -> list[Command]:
    commands: list[Command] = []
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            text = line[2:]
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1].rstrip() + " " + lines[i].strip()
            if text.strip() == "echo $?":
                assert commands, "`$ echo $?` must follow a command"
                i += 1
                commands[-1].exit_code = int(lines[i].strip())
            else:
                commands.append(Command(text))
        else:
            assert commands, f"output before any command: {line!r}"
            commands[-1].output.append(line)
        i += 1
    return commands


def console_blocks(page: Path) -> list[Block]:
    name = _page_name(page)
    return [Block(name, n, _parse_console(body), reason)
            for n, (body, reason) in enumerate(_blocks(page.read_text(), "console"), 1)]


def ci_commands(page: Path) -> list[Command]:
    """The ``wnconvert`` commands of the page's ```yaml blocks: the ``run: >`` steps of a
    GitHub Actions job (a folded scalar: its indented lines joined by spaces)."""
    commands: list[Command] = []
    for body, _ in _blocks(page.read_text(), "yaml"):
        lines = body.splitlines()
        for i, line in enumerate(lines):
            key = re.match(r"^(\s*)run: >$", line)
            if not key:
                continue
            words: list[str] = []
            for following in lines[i + 1:]:
                if len(following) - len(following.lstrip()) <= len(key[1]):
                    break
                words.append(following.strip())
            if words and words[0].startswith("wnconvert "):
                commands.append(Command(" ".join(words)))
    return commands


def python_blocks(page: Path) -> list[str]:
    return [body for body, _ in _blocks(page.read_text(), "python")]


# Lines that cannot be the same from run to run are not compared.
_SKIPPED = [
    re.compile(r"^[\s┏┓┗┛┡┩┢┪└┘├┤┌┐━─┳┻╇╈┼┬┴═]*$"),  # table borders
    re.compile(r"\.\.\.|…"),  # elided
    re.compile(r"\b\d(\.\d+)?e-(0[6-9]|[1-9]\d)\b"),  # rounding-level differences
]
# Values that vary (the machine's speed, torch's serialization, the temp folder) are masked,
# and the rest of their line is compared.
_MASKED = [
    (re.compile(r"\b\d+(\.\d+)? s\b"), "<seconds>"),
    (re.compile(r"\b\d[\d.,]* [KMG]B\b"), "<size>"),
    (re.compile(r"/tmp/\S*"), "<tmp>"),
]


def normalized(line: str) -> str:
    line = " ".join(line.split())
    for pattern, mask in _MASKED:
        line = pattern.sub(mask, line)
    return line


def expectations(command: Command) -> list[str]:
    """The output lines of a command that must appear, normalized."""
    lines = [normalized(line) for line in command.output]
    return [line for line in lines if line and not any(s.search(line) for s in _SKIPPED)]


# ---------------------------------------------------------------------------------------------
# Files a reader of the docs already has (their own checkpoints and models)


def _models_py(folder: Path, models: ModuleType) -> None:
    (folder / "models.py").write_text(
        '"""The reader\'s model code: the fixtures\' generator with 80 mel bins."""\n'
        "import importlib.util\n"
        "from pathlib import Path\n\n"
        "_spec = importlib.util.spec_from_file_location(\n"
        '    "docs_fixture_models", Path(__file__).parent / "fixtures" / "models.py")\n'
        "_fixtures = importlib.util.module_from_spec(_spec)\n"
        "_spec.loader.exec_module(_fixtures)\n\n\n"
        'def build_generator(weight_norm="parametrize"):\n'
        "    return _fixtures.build_generator(weight_norm, n_mels=80)\n")


def _generator_pt(name: str) -> Callable[[Path, ModuleType], None]:
    def build(folder: Path, models: ModuleType) -> None:
        with warnings.catch_warnings():  # torch.nn.utils.weight_norm is deprecated
            warnings.filterwarnings("ignore", message=".*weight_norm is deprecated.*")
            model = models.build_generator("legacy", n_mels=80, seed=3)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), folder / name)

    return build


def _hifigan_g(folder: Path, models: ModuleType) -> None:
    # What jik876/hifi-gan's train.py saves: no extension, the generator under "generator".
    legacy = torch.load(folder / "fixtures" / "tiny_hifigan_legacy.pt", weights_only=True)
    torch.save({"generator": legacy["generator"]}, folder / "g_02500000")


def _hifigan_nemo(folder: Path, models: ModuleType) -> None:
    # NeMo's layout: a gzip'd tar of ./model_config.yaml and ./model_weights.ckpt (flat keys).
    import io
    import tarfile

    legacy = torch.load(folder / "fixtures" / "tiny_hifigan_legacy.pt", weights_only=True)
    weights = io.BytesIO()
    torch.save({f"generator.{k}": v for k, v in legacy["generator"].items()}, weights)
    with tarfile.open(folder / "hifigan.nemo", "w:gz") as tar:
        for name, data in (("./model_config.yaml", b"target: HifiGanModel\n"),
                           ("./model_weights.ckpt", weights.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _plain_safetensors(folder: Path, models: ModuleType) -> None:
    from safetensors.torch import save_file

    plain = torch.load(folder / "fixtures" / "tiny_hifigan_plain.pt", weights_only=True)
    save_file(plain, str(folder / "plain.safetensors"))


def _template_pt(folder: Path, models: ModuleType) -> None:
    shutil.copyfile(folder / "fixtures" / "tiny_hifigan_template.pt", folder / "template.pt")


def _wav2vec2_pt(folder: Path, models: ModuleType) -> None:
    # The plain positional conv of a wav2vec2-style encoder (grouped Conv1d, weight (C, C/G, K)),
    # whose weight norm keeps axis 2 (the kernel), plus a layer that stays as it is.
    torch.manual_seed(4)
    conv = torch.nn.Conv1d(16, 16, 8, padding=4, groups=4)
    norm = torch.nn.LayerNorm(16)
    state = {f"encoder.pos_conv_embed.conv.{k}": v for k, v in conv.state_dict().items()}
    state |= {f"encoder.layer_norm.{k}": v for k, v in norm.state_dict().items()}
    torch.save(state, folder / "wav2vec2.pt")


def _checkpoint_best_pt(folder: Path, models: ModuleType) -> None:
    # As fairseq saves wav2vec2/HuBERT: its argparse.Namespace beside the model (positional conv
    # normed over dim 2) and the optimizer history.
    import argparse

    torch.manual_seed(5)
    model = {"encoder.pos_conv.0.bias": torch.randn(16),
             "encoder.pos_conv.0.weight_g": torch.rand(1, 1, 8) + 0.5,
             "encoder.pos_conv.0.weight_v": torch.randn(16, 4, 8),
             "encoder.layer_norm.weight": torch.ones(16)}
    torch.save({"args": argparse.Namespace(arch="wav2vec2", conv_pos=8, conv_pos_groups=4),
                "model": model,
                "optimizer_history": [{"optimizer_name": "Adam", "num_updates": 400000}]},
               folder / "checkpoint_best.pt")


class Vocoder(torch.nn.Module):
    """Three weight-normed convolutions: mel (1, 80, frames) -> audio (1, 1, frames * 4)."""

    def __init__(self) -> None:
        super().__init__()
        weight_norm = torch.nn.utils.parametrizations.weight_norm
        self.conv_pre = weight_norm(torch.nn.Conv1d(80, 128, 7, padding=3))
        self.up = weight_norm(torch.nn.ConvTranspose1d(128, 64, 8, stride=4, padding=2))
        self.conv_post = weight_norm(torch.nn.Conv1d(64, 1, 7, padding=3))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.leaky_relu(self.conv_pre(mel), 0.1)
        x = torch.nn.functional.leaky_relu(self.up(x), 0.1)
        return torch.tanh(self.conv_post(x))


def _vocoder_onnx(folder: Path, models: ModuleType) -> None:
    # Exported with weight norm in place: the dynamo exporter keeps the chains of the two
    # large weights (over 8192 elements) and folds the smallest into an initializer `mul_2`.
    torch.manual_seed(5)
    model = Vocoder().eval()
    with warnings.catch_warnings():  # torch's own deprecation warnings, raised inside torch
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 80, 50),), str(folder / "vocoder.onnx"),
                          dynamo=True, input_names=["mel"], output_names=["audio"],
                          verbose=False)


def _bad_onnx(folder: Path, models: ModuleType) -> None:
    # The fixture generator exported correctly, then conv_pre.weight scaled by 1.01.
    import onnx
    from onnx import numpy_helper

    result = CliRunner().invoke(app, [
        "fold", "fixtures/tiny_hifigan_legacy.pt", "--to", "onnx",
        "--model", "fixtures/models.py:build_generator", "--input", "1x16x64",
        "--dynamic", "0:2=time", "--no-verify", "-o", "bad.onnx"])
    assert result.exit_code == 0, result.output
    model = onnx.load(folder / "bad.onnx")
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name == "conv_pre.weight":
            scaled = numpy_helper.to_array(tensor) * 1.01
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(
                scaled.astype(numpy_helper.to_array(tensor).dtype), tensor.name))
    onnx.save(model, folder / "bad.onnx")


USER_FILES: dict[str, Callable[[Path, ModuleType], None]] = {
    "models.py": _models_py,
    "generator.pt": _generator_pt("generator.pt"),
    "checkpoints/generator.pt": _generator_pt("checkpoints/generator.pt"),
    "plain.safetensors": _plain_safetensors,
    "g_02500000": _hifigan_g,
    "hifigan.nemo": _hifigan_nemo,
    "template.pt": _template_pt,
    "wav2vec2.pt": _wav2vec2_pt,
    "checkpoint_best.pt": _checkpoint_best_pt,
    "vocoder.onnx": _vocoder_onnx,
    "bad.onnx": _bad_onnx,
}


def _names(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w/.-]){re.escape(name)}(?![\w.])", text) is not None


@pytest.fixture(scope="session")
def user_file(tmp_path_factory: pytest.TempPathFactory,
              fixture_models: ModuleType) -> Callable[[str], Path]:
    """``user_file(name)``: a folder holding the user file ``name`` (with what comes with it,
    such as ``vocoder.onnx.data``) next to a copy of fixtures/. Each is built once per session:
    several pages use the exported ones."""
    root = tmp_path_factory.mktemp("user_files")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            folder = root / re.sub(r"\W", "_", name)
            shutil.copytree(REPO / "fixtures", folder / "fixtures")
            cwd = Path.cwd()
            os.chdir(folder)  # builders run the CLI with the docs' relative paths
            try:
                USER_FILES[name](folder, fixture_models)
            finally:
                os.chdir(cwd)
            built[name] = folder
        return built[name]

    return get


def _copy_user_file(source: Path, target: Path) -> None:
    def skip_fixtures(folder: str, names: list[str]) -> list[str]:
        return ["fixtures"] if folder == str(source) else []

    shutil.copytree(source, target, dirs_exist_ok=True, ignore=skip_fixtures)


@pytest.fixture
def page_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                user_file: Callable[[str], Path]) -> Callable[[str], Path]:
    """``page_folder(text)``: a folder with fixtures/ and the user files ``text`` names,
    made the current folder."""

    def make(text: str) -> Path:
        shutil.copytree(REPO / "fixtures", tmp_path / "fixtures")
        for name in USER_FILES:
            if _names(text, name):
                _copy_user_file(user_file(name), tmp_path)
        monkeypatch.chdir(tmp_path)
        return tmp_path

    return make


# ---------------------------------------------------------------------------------------------
# Python


def test_the_python_api_page_has_an_example_per_job() -> None:
    code = "\n".join(python_blocks(PYTHON_API))
    for job in ("load_checkpoint", "save_checkpoint", "fold_state_dict", "decompose_state_dict",
                "restyle_state_dict", "export_onnx", "verify(", "fold_onnx", "check_onnx",
                "inspect_checkpoint", "fold_checkpoint", "decompose_checkpoint",
                "restyle_checkpoint", "model=net", "fold_module"):
        assert job in code, job


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=_page_name)
def test_python_examples_run(page: Path, page_folder: Callable[[str], Path],
                             capsys: pytest.CaptureFixture[str]) -> None:
    examples = python_blocks(page)
    page_folder("\n".join(examples))
    for number, code in enumerate(examples, 1):
        exec(compile(code, f"{_page_name(page)} python example {number}", "exec"), {})


# ---------------------------------------------------------------------------------------------
# Console


def test_not_run_blocks_are_the_listed_ones() -> None:
    marked = {(block.page, block.commands[0].line.split("#")[0].strip())
              for page in PAGES for block in console_blocks(page) if block.not_run}
    assert marked == NOT_RUN


def test_every_page_is_reached_from_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"({_page_name(page)})" in readme, _page_name(page)


def test_conventions_are_parsed() -> None:
    block = _parse_console(
        "$ wnconvert check a.onnx \\\n    --json  # a comment\nerror: x\n$ echo $?\n1\n"
        "$ wnconvert check b.onnx\nclean: b.onnx   computes no weight norm at run time\n"
        "│ row │ ... │\nin 0.56 s\n")
    assert [c.argv for c in block] == [["wnconvert", "check", "a.onnx", "--json"],
                                        ["wnconvert", "check", "b.onnx"]]
    assert [c.exit_code for c in block] == [1, 0]
    assert expectations(block[1]) == ["clean: b.onnx computes no weight norm at run time",
                                      "in <seconds>"]


def _run(command: Command, where: str) -> None:
    argv = command.argv
    assert argv[0] == "wnconvert", (
        f"{where}: `{command.line}` is not a wnconvert command; mark the block "
        "<!-- not-run: REASON --> if it cannot run in the tests")
    result = CliRunner().invoke(app, argv[1:])
    shown = f"{where}: $ {command.line}\n--- output:\n{result.output}"
    assert result.exit_code == command.exit_code, (
        f"exit {result.exit_code}, the docs say {command.exit_code}\n{shown}\n{result.exception!r}")
    printed = {normalized(line) for line in result.output.splitlines()}
    missing = [line for line in expectations(command) if line not in printed]
    assert not missing, "lines the docs show that the command did not print:\n  " + "\n  ".join(
        missing) + "\n" + shown


@pytest.mark.slow
def test_the_readme_ci_example_runs(page_folder: Callable[[str], Path]) -> None:
    commands = ci_commands(REPO / "README.md")
    # export, then the gate, then the lint
    assert [c.argv[1] for c in commands] == ["fold", "verify", "check"]
    folder = page_folder("\n".join(c.line for c in commands))
    for command in commands:
        _run(command, "README.md CI example")
    for report in ("verify.json", "junit.xml", "verify.md", "lint.md"):
        assert (folder / report).is_file(), report


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if console_blocks(p)], ids=_page_name)
def test_console_examples_run(page: Path, page_folder: Callable[[str], Path]) -> None:
    blocks = [block for block in console_blocks(page) if not block.not_run]
    page_folder("\n".join(c.line for block in blocks for c in block.commands))
    for block in blocks:
        for command in block.commands:
            _run(command, f"{block.page} console block {block.number}")
