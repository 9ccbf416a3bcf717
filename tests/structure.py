"""The code base's structure rules, checked from the source alone (``ast``, nothing imported).

    python tests/structure.py          one line per violation not in the allow-list; exit 1 if any
    python tests/structure.py --all    every violation, the allow-list ignored (to see what is left)

The rules, over every module under ``edged/``:

* ``long-module``: no module over 400 lines;
* ``long-function``: no function or method over 60 lines, counted from its ``def`` to its
  last line (docstring, nested functions and comments included);
* ``hasattr`` / ``getattr``: no duck typing on engines, streams or sinks. Every ``hasattr(``
  and ``getattr(`` call is flagged unless its first argument is a module (a name bound by an
  import, or ``importlib.import_module(...)``) or a class (one defined in the module, or
  ``type(x)``), or it is in ``LEGITIMATE`` below, each with its reason;
* ``any-param``: no parameter typed ``Any`` (or ``Any | None``, ``Optional[Any]``) in the
  orchestration modules (``ORCHESTRATION``), where a project type exists. ``*args`` and
  ``**kwargs`` are not counted: they pass arguments through.

A violation is named by a key that does not depend on line numbers:
``path:kind qualname[: detail]``, e.g. ``edged/daemon/reload.py:long-function apply_reload`` or
``edged/stream/stream.py:hasattr Stream.start: hasattr(self.engine, 'status')``. Known
violations waiting to be fixed would be listed in ``tests/structure_allow.txt`` (empty: there
are none); an entry there or in ``LEGITIMATE`` that matches nothing is itself reported.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOW_FILE = ROOT / "tests" / "structure_allow.txt"

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

# path prefixes (relative to the repository) where a parameter typed Any is flagged
ORCHESTRATION = (
    "edged/api.py",
    "edged/events.py",
    "edged/sinks/",
    "edged/sources/",
    "edged/inference/",
    "edged/stream/",
    "edged/daemon/",
    "edged/demo/",
)
ANY_ANNOTATIONS = {"Any", "typing.Any", "Any | None", "None | Any", "Optional[Any]", "typing.Optional[Any]"}

# The legitimate hasattr / getattr calls: the objects are not edged's, or the attribute is a
# field chosen by name. Key (as printed) -> reason.
# The legitimate uses: the objects are not edged's (no project type exists), or the attribute
# is a field chosen by name. Key (as printed) -> reason.
_PAHO = "paho-mqtt's callback signature: paho's own objects, no project type exists"
LEGITIMATE: dict[str, str] = {
    "edged/config.py:getattr load_config: getattr(exc, 'problem_mark', None)": (
        "PyYAML's exceptions: only MarkedYAMLError has problem_mark; any YAMLError can arrive here"
    ),
    "edged/config.py:getattr load_config: getattr(exc, 'problem', None)": (
        "PyYAML's exceptions: only MarkedYAMLError has problem; any YAMLError can arrive here"
    ),
    "edged/daemon/reload.py:getattr plan_reload: getattr(new, k)": (
        "a Config field by name: RESTART_KEYS lists the fields a reload cannot change"
    ),
    "edged/daemon/reload.py:getattr plan_reload: getattr(old, k)": (
        "a Config field by name: RESTART_KEYS lists the fields a reload cannot change"
    ),
    "edged/tools/convert.py:hasattr saved_model_input_shape: hasattr(loaded, 'signatures')": (
        "TensorFlow's objects: tf.saved_model.load returns a trackable object with or without signatures"
    ),
    "edged/api.py:any-param Handler._json(obj)": "any JSON-serialisable value: Any is its type",
    **{
        f"edged/sinks/mqtt/connection.py:any-param Connection.{fn}({arg})": _PAHO
        for fn, args in (
            ("_on_connect", ("client", "userdata", "flags", "reason_code", "properties")),
            ("_on_disconnect", ("client", "userdata", "flags", "reason_code", "properties")),
            ("_on_connect_fail", ("client", "userdata")),
        )
        for arg in args
    },
    "edged/sinks/mqtt/sink.py:any-param MqttSink._acked(info)": "paho-mqtt's MQTTMessageInfo: no project type exists",
}


@dataclass(frozen=True)
class Violation:
    key: str
    line: int
    detail: str

    def __str__(self) -> str:
        return f"{self.key}  (line {self.line}: {self.detail})"


def _module_and_class_names(tree: ast.Module) -> set[str]:
    """Names bound by an import, by ``importlib.import_module(...)``, or by a class statement."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign) and _is_import_module(node.value):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _is_import_module(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    return (isinstance(f, ast.Attribute) and f.attr == "import_module") or (
        isinstance(f, ast.Name) and f.id == "import_module"
    )


def _is_module_or_class(node: ast.AST, names: set[str]) -> bool:
    if isinstance(node, ast.Name):
        return node.id in names
    if isinstance(node, ast.Attribute):  # a dotted module path: os.path, a class's attribute: Foo.Bar
        return _is_module_or_class(node.value, names)
    if _is_import_module(node):
        return True
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "type"


class _Walker(ast.NodeVisitor):
    def __init__(self, path: str, tree: ast.Module) -> None:
        self.path = path
        self.names = _module_and_class_names(tree)
        self.any_params = path.startswith(ORCHESTRATION)
        self.scope: list[str] = []
        self.found: list[Violation] = []

    def _qualname(self) -> str:
        return ".".join(self.scope) or "<module>"

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scope.append(node.name)
        name = self._qualname()
        end = node.end_lineno or node.lineno
        length = end - node.lineno + 1
        if length > MAX_FUNCTION_LINES:
            self.found.append(
                Violation(
                    f"{self.path}:long-function {name}", node.lineno, f"{length} lines, at most {MAX_FUNCTION_LINES}"
                )
            )
        if self.any_params:
            a = node.args
            for arg in a.posonlyargs + a.args + a.kwonlyargs:
                if arg.annotation is not None and ast.unparse(arg.annotation) in ANY_ANNOTATIONS:
                    self.found.append(
                        Violation(
                            f"{self.path}:any-param {name}({arg.arg})",
                            arg.lineno,
                            f"typed {ast.unparse(arg.annotation)}: use the project's type",
                        )
                    )
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        if isinstance(f, ast.Name) and f.id in ("hasattr", "getattr") and node.args:
            if not _is_module_or_class(node.args[0], self.names):
                self.found.append(
                    Violation(
                        f"{self.path}:{f.id} {self._qualname()}: {ast.unparse(node)}",
                        node.lineno,
                        "duck typing: give the object a declared interface",
                    )
                )
        self.generic_visit(node)


def check_file(path: Path, root: Path) -> list[Violation]:
    rel = path.relative_to(root).as_posix()
    text = path.read_text(encoding="utf-8")
    found = []
    n = len(text.splitlines())
    if n > MAX_MODULE_LINES:
        found.append(Violation(f"{rel}:long-module", 1, f"{n} lines, at most {MAX_MODULE_LINES}"))
    tree = ast.parse(text, filename=rel)
    walker = _Walker(rel, tree)
    walker.visit(tree)
    return found + walker.found


def all_violations(root: Path = ROOT) -> Iterator[Violation]:
    """Every violation under ``root/edged``, the legitimate uses included."""
    for path in sorted((root / "edged").rglob("*.py")):
        yield from check_file(path, root)


def violations(root: Path = ROOT) -> Iterator[Violation]:
    """Every violation under ``root/edged``, the legitimate uses left out."""
    return (v for v in all_violations(root) if v.key not in LEGITIMATE)


def read_allow(path: Path = ALLOW_FILE) -> set[str]:
    """The known violations: one key a line; comment lines (``#``) and blank lines ignored."""
    if not path.is_file():
        return set()
    lines = (ln.strip() for ln in path.read_text(encoding="utf-8").splitlines())
    return {ln for ln in lines if ln and not ln.startswith("#")}


def report(root: Path = ROOT, allow: set[str] | None = None, legitimate: dict[str, str] | None = None) -> list[str]:
    """The lines to print: the violations neither allowed nor legitimate, then the entries of
    either list that match nothing (the code changed: update or remove them)."""
    allow = read_allow() if allow is None else allow
    legitimate = LEGITIMATE if legitimate is None else legitimate
    found = list(all_violations(root))
    keys = {v.key for v in found}
    out = [str(v) for v in found if v.key not in allow and v.key not in legitimate]
    out += [
        f"{key}  (stale entry in tests/structure_allow.txt: it matches nothing, remove it)"
        for key in sorted(allow - keys)
    ]
    out += [
        f"{key}  (stale entry in LEGITIMATE, tests/structure.py: it matches nothing, update or remove it)"
        for key in sorted(set(legitimate) - keys)
    ]
    return out


def main(argv: list[str]) -> int:
    lines = [str(v) for v in violations()] if "--all" in argv else report()
    for line in lines:
        print(line)
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
