"""``import rerank_plugins`` stays light; a missing extra names what to install."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = [
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "httpx",
    "langchain_core",
    "llama_index",
    "sentence_transformers",
    "fastapi",
    "ray",
]


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_importing_the_package_imports_no_heavy_dependency() -> None:
    proc = python(f"import sys, rerank_plugins\nprint([m for m in {HEAVY!r} if m in sys.modules])")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.slow  # > 5 s here (pytest --durations, shared 2-core machine)
@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("CrossEncoderScorer", "rerank_plugins.local.cross_encoder"),
        ("DecoderScorer", "rerank_plugins.local.decoder"),
        ("ColBERTScorer", "rerank_plugins.local.colbert.scorer"),
        ("MatryoshkaScorer", "rerank_plugins.local.matryoshka"),
        ("FillMask", "rerank_plugins.local.fill_mask"),
        ("RemoteScorer", "rerank_plugins.remote.scorer"),
    ],
)
def test_scorer_classes_are_public_names_loaded_on_first_use(name: str, module: str) -> None:
    proc = python(
        "import sys, rerank_plugins\n"
        f"before = {module!r} in sys.modules\n"
        f"cls = getattr(rerank_plugins, {name!r})\n"
        f"print(before, cls.__module__, {name!r} in rerank_plugins.__all__)"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", module, "True"]


def test_unknown_attribute_is_an_attribute_error() -> None:
    import rerank_plugins

    with pytest.raises(AttributeError, match="no attribute 'NoSuchScorer'"):
        rerank_plugins.NoSuchScorer  # noqa: B018


@pytest.mark.parametrize(
    ("blocked", "module", "extra"),
    [
        ("langchain_core", "rerank_plugins.langchain", "langchain"),
        ("llama_index", "rerank_plugins.llama_index", "llama-index"),
        ("torch", "rerank_plugins.testing", "torch"),
    ],
)
def test_missing_extra_raises_an_import_error_naming_the_extra(
    blocked: str, module: str, extra: str
) -> None:
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "import importlib\n"
        "from rerank_plugins import MissingExtraError\n"
        "try:\n"
        f"    m = importlib.import_module({module!r})\n"
        "    if hasattr(m, 'make_modernbert_checkpoint'):\n"
        "        m.make_modernbert_checkpoint('/tmp/never')\n"
        "except MissingExtraError as e:\n"
        "    assert isinstance(e, ImportError)\n"
        "    print(e)\n"
    )
    proc = python(code)
    assert proc.returncode == 0, proc.stderr
    assert f"pip install 'rerank-plugins[{extra}]'" in proc.stdout


def test_the_root_package_holds_at_most_ten_modules() -> None:
    # Rooms, not a heap: a new concept goes into a subpackage (cli/, bulk/, ray/, serve/...).
    from pathlib import Path

    import rerank_plugins

    root = Path(rerank_plugins.__file__).parent
    modules = sorted(p.stem for p in root.glob("*.py") if p.stem not in {"__init__", "__main__"})
    assert len(modules) <= 10, modules


def test_the_moved_command_line_names_keep_working() -> None:
    # (rerank_plugins.ray's names are imported by tests/test_ray.py, which needs Ray.)
    from rerank_plugins.bulk import BulkSummary, score_file, score_table
    from rerank_plugins.cli import main

    assert callable(main) and callable(score_file) and callable(score_table)
    assert BulkSummary(output="x").rows == 0


def test_every_name_in_the_root_all_is_importable_lazily_where_lazy() -> None:
    code = (
        "import json, sys, types\n"
        "import rerank_plugins as rp\n"
        f"heavy = {HEAVY!r}\n"
        "loaded = lambda: [m for m in heavy if m in sys.modules]\n"
        "out = {'all': rp.__all__, 'lazy_table': sorted(rp._LAZY)}\n"
        "out['eager'] = [n for n in rp.__all__ if n in vars(rp)]\n"
        "out['lazy'] = [n for n in rp.__all__ if n not in vars(rp)]\n"
        "out['public'] = sorted(n for n, v in vars(rp).items() if not n.startswith('_')\n"
        "    and not isinstance(v, types.ModuleType)\n"
        "    and n not in ('annotations', 'TYPE_CHECKING', 'Any'))\n"
        "for n in out['eager']:\n"
        "    getattr(rp, n)\n"
        "out['heavy_after_eager'] = loaded()\n"
        "ns = {}\n"
        "exec('from rerank_plugins import *', ns)\n"
        "out['star'] = sorted(n for n in ns if not n.startswith('__'))\n"
        "out['named'] = {n: ns[n].__name__ for n in rp.__all__\n"
        "    if isinstance(ns[n], type) or isinstance(ns[n], types.FunctionType)}\n"
        "out['homes'] = {n: getattr(ns[n], '__module__', '') for n in out['lazy']}\n"
        "out['same'] = all(ns[n] is getattr(sys.modules[rp._LAZY[n]], n) for n in out['lazy'])\n"
        "print(json.dumps(out))\n"
    )
    proc = python(code)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    names = out["all"]
    assert len(names) == len(set(names)), "duplicates in __all__"
    assert out["heavy_after_eager"] == []  # the eager names pull in no heavy dependency
    assert sorted(out["lazy"]) == out["lazy_table"]  # lazy exactly where the table says
    assert set(out["public"]) <= set(names), "a public name of the package is not in __all__"
    assert out["star"] == sorted(names)  # `import *` gives every name, lazy ones loaded
    assert out["same"]
    # Classes and functions are exported under their own names (no stale alias).
    assert {"RemoteScorer", "rank", "RerankError"} <= out["named"].keys()
    assert {n: v for n, v in out["named"].items() if v != n} == {}
    assert all(home.startswith("rerank_plugins.") for home in out["homes"].values())
