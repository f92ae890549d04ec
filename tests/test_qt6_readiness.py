"""Qt6 / PyQt6 / QGIS 4 readiness of the plugin's own sources, checked without a Qt6 QGIS.

The scan reads every .py of the plugin (outside tests/, benchmarks/ and hidden folders) and reports
file:line for what breaks on Qt6: Qt imported other than through `qgis.PyQt`, `exec_`, `QRegExp`,
`QDesktopWidget`, `QFontMetrics.width`, `QAction` from QtWidgets without the QtGui import first,
`QVariant` field types, and enum members written unscoped (`Qt.AlignLeft`, `QgsTask.CanCancel`).
Enums are found by resolving `Class.Name` against the installed QGIS: a name that is an enum
member must be written `Class.Enum.Name` (PyQt6 has no unscoped members; QGIS 3.22 already has
the scoped ones). `metadata.txt` may say `supportsQt6=True` only while the scan finds nothing.
Run as a script to print the hits: python tests/test_qt6_readiness.py
"""
from __future__ import annotations

import ast
import configparser
import enum
import importlib
import io
import os
import re
import sys
import tokenize
from dataclasses import dataclass

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIPPED_FOLDERS = {"tests", "benchmarks", "__pycache__"}

# (pattern on code with comments and strings blanked, what breaks on Qt6 and what to write)
LINE_RULES = [
    (re.compile(r"^\s*(from|import)\s+PyQt[456]\b"),
     "Qt imported directly: import it through qgis.PyQt"),
    (re.compile(r"^\s*(from\s+(PyQt\d\.)?sip\s+import|import\s+(PyQt\d\.)?sip\b)"),
     "sip imported directly: use `from qgis.PyQt import sip`"),
    (re.compile(r"\bexec_\s*\("), "exec_() is gone in PyQt6: use exec()"),
    (re.compile(r"\bQRegExp\b"), "QRegExp is gone in Qt6: use QRegularExpression"),
    (re.compile(r"\bQDesktopWidget\b|\.desktop\s*\(\s*\)"),
     "QDesktopWidget is gone in Qt6: use QScreen (QGuiApplication.primaryScreen())"),
    (re.compile(r"\b(fontMetrics\s*\(\s*\)|QFontMetricsF?\s*\([^)]*\))\s*\.\s*width\s*\("),
     "QFontMetrics.width() is gone in Qt6: use horizontalAdvance()"),
    (re.compile(r"\bQVariant\s*\.\s*(Type\b|Int|UInt|LongLong|ULongLong|Double|String|Bool|"
                r"Date|DateTime|Time|ByteArray|List|Map|StringList|Invalid)\b"),
     "QVariant.Type is gone in PyQt6 (QGIS's Qt6 builds patch it back only for old code): "
     "QGIS >= 3.38 types fields with QMetaType.Type"),
]
QTWIDGETS_ACTION = re.compile(r"^\s*from\s+qgis\.PyQt\.QtWidgets\s+import\b.*\b(QAction|QActionGroup|"
                              r"QShortcut|QUndoCommand|QUndoStack|QFileSystemModel)\b")
GUARD = re.compile(r"^\s*except\s+ImportError\b")
# The one place where QVariant field types are allowed: the QGIS < 3.38 branch of a version test.
QGIS_FROM_338 = re.compile(r"QGIS_VERSION_INT\s*>=\s*33800")


@dataclass(frozen=True)
class Hit:
    path: str
    line: int
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.why}"


def plugin_sources(root: str = REPO_ROOT) -> list[str]:
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders
                               if not d.startswith(".") and d not in SKIPPED_FOLDERS)
        found += [os.path.join(folder, f) for f in sorted(files) if f.endswith(".py")]
    return found


def blank_comments_and_strings(text: str) -> list[str]:
    """The source's lines with comments and string contents replaced by spaces."""
    lines = text.splitlines()
    grid = [list(line) for line in lines]
    kinds = {tokenize.COMMENT, tokenize.STRING}
    kinds |= {getattr(tokenize, "FSTRING_MIDDLE")} if hasattr(tokenize, "FSTRING_MIDDLE") else set()
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type not in kinds:
            continue
        (row, col), (end_row, end_col) = token.start, token.end
        for r in range(row - 1, end_row):
            start = col if r == row - 1 else 0
            stop = end_col if r == end_row - 1 else len(grid[r])
            grid[r][start:stop] = " " * (stop - start)
    return ["".join(row) for row in grid]


def line_hits(path: str, text: str) -> list[Hit]:
    hits = []
    lines = blank_comments_and_strings(text)
    code_lines = [(n, line) for n, line in enumerate(lines, 1) if line.strip()]
    before_338 = qgis_before_338_lines(text)
    previous = {n: code_lines[i - 1][1] if i else "" for i, (n, _) in enumerate(code_lines)}
    for number, line in code_lines:
        for pattern, why in LINE_RULES:
            if pattern.search(line) and not (why.startswith("QVariant") and number in before_338):
                hits.append(Hit(path, number, why))
        if QTWIDGETS_ACTION.search(line) and not GUARD.search(previous[number]):
            hits.append(Hit(path, number, "QAction & co. live in QtGui on Qt6: import from "
                                          "qgis.PyQt.QtGui first, QtWidgets only in `except ImportError`"))
    return hits


def qgis_before_338_lines(text: str) -> set[int]:
    """Lines of the `else:` blocks of `if Qgis.QGIS_VERSION_INT >= 33800:` (QGIS 3.22-3.36 only)."""
    lines = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.If) and node.orelse and QGIS_FROM_338.search(ast.unparse(node.test)):
            lines.update(range(node.orelse[0].lineno, node.orelse[-1].end_lineno + 1))
    return lines


def is_enum_member(value) -> bool:
    # PyQt5's sip enums are int subclasses whose type is sip.enumtype; PyQt6's are enum.Enum.
    return isinstance(value, enum.Enum) or type(type(value)).__name__ == "enumtype"


def imported_qgis_names(tree: ast.AST) -> dict[str, object]:
    """Local name -> object for every `from qgis... import Name [as local]` in the module."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qgis"):
            try:
                module = importlib.import_module(node.module)
            except ImportError:
                continue  # e.g. QtGui.QAction on Qt5: the fallback import names it
            for alias in node.names:
                value = getattr(module, alias.name, None)
                if value is None:  # a submodule: from qgis.PyQt import QtCore
                    try:
                        value = importlib.import_module(f"{node.module}.{alias.name}")
                    except ImportError:
                        continue
                names[alias.asname or alias.name] = value
    return names


def resolve(node: ast.AST, names: dict[str, object]):
    """The object an expression `Name` or `Name.attr.attr` stands for, or None."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = resolve(node.value, names)
        return None if owner is None else getattr(owner, node.attr, None)
    return None


def is_enum_type(value) -> bool:
    return isinstance(value, enum.EnumMeta) or type(value).__name__ == "enumtype"


def enum_hits(path: str, text: str) -> list[Hit]:
    tree = ast.parse(text, path)
    names = imported_qgis_names(tree)
    hits = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        owner = resolve(node.value, names)
        if owner is None or is_enum_type(owner):
            continue  # unknown, or already scoped: Class.Enum.Member
        value = getattr(owner, node.attr, None)
        if not is_enum_member(value):
            continue
        kind, written = type(value), ast.unparse(node.value)
        scoped = (f"{written}.{kind.__name__}.{node.attr}"
                  if getattr(owner, kind.__name__, None) is kind else f"{kind.__qualname__}.{node.attr}")
        hits.append(Hit(path, node.lineno, f"unscoped enum {written}.{node.attr}: write {scoped}"))
    return hits


def scan(paths: list[str]) -> list[Hit]:
    hits = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        shown = os.path.relpath(path, REPO_ROOT) if path.startswith(REPO_ROOT) else path
        hits += line_hits(shown, text) + enum_hits(shown, text)
    return sorted(set(hits), key=lambda h: (h.path, h.line, h.why))


def declares_qt6_support(root: str = REPO_ROOT) -> bool:
    parser = configparser.ConfigParser()
    parser.read(os.path.join(root, "metadata.txt"), encoding="utf-8")
    return parser.getboolean("general", "supportsQt6", fallback=False)


# -- tests -----------------------------------------------------------------------------------------

BAD_LINES = {
    "from PyQt5.QtWidgets import QDialog": "Qt imported directly",
    "import sip": "sip imported directly",
    "dialog.exec_()": "exec_() is gone",
    "pattern = QRegExp('a+')": "QRegExp",
    "screen = QApplication.desktop()": "QDesktopWidget",
    "w = widget.fontMetrics().width('abc')": "horizontalAdvance",
    "field = QgsField('n', QVariant.Int)": "QVariant.Type",
    "from qgis.PyQt.QtWidgets import QAction, QMenu": "QAction & co.",
    "label.setAlignment(Qt.AlignLeft)": "unscoped enum Qt.AlignLeft: write Qt.AlignmentFlag.AlignLeft",
    "answer = QMessageBox.Yes": "unscoped enum QMessageBox.Yes: write QMessageBox.StandardButton.Yes",
    "role = QtCore.Qt.UserRole": "unscoped enum QtCore.Qt.UserRole: write QtCore.Qt.ItemDataRole.UserRole",
    "flags = QgsTask.CanCancel": "unscoped enum QgsTask.CanCancel: write QgsTask.Flag.CanCancel",
    "kind = QgsProcessing.TypeVectorPolygon": "unscoped enum QgsProcessing.TypeVectorPolygon",
}
GOOD_SOURCE = '''\
"""Mentions exec_() and QRegExp in a docstring only."""
from qgis.PyQt import QtCore
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QMessageBox
from qgis.core import Qgis, QgsProcessing, QgsTask
try:
    from qgis.PyQt.QtGui import QAction
except ImportError:
    from qgis.PyQt.QtWidgets import QAction
if Qgis.QGIS_VERSION_INT >= 33800:
    from qgis.PyQt.QtCore import QMetaType
    INT = QMetaType.Type.Int
else:
    INT = QVariant.Type.Int
align = Qt.AlignmentFlag.AlignLeft  # not Qt.AlignLeft
role = QtCore.Qt.ItemDataRole.UserRole + 1
answer = QMessageBox.StandardButton.Yes
flags = QgsTask.Flag.CanCancel
out = QgsProcessing.TEMPORARY_OUTPUT
dialog.exec()
'''
PLANTED_HEADER = ("from qgis.PyQt import QtCore\nfrom qgis.PyQt.QtCore import Qt, QVariant\n"
                  "from qgis.PyQt.QtWidgets import QMessageBox\n"
                  "from qgis.core import QgsField, QgsProcessing, QgsTask\n")


def test_the_scan_reports_each_planted_bad_line_with_its_line_number(tmp_path):
    source = PLANTED_HEADER + "\n".join(BAD_LINES) + "\n"
    path = tmp_path / "planted.py"
    path.write_text(source, encoding="utf-8")
    hits = scan([str(path)])
    first = PLANTED_HEADER.count("\n") + 1
    for number, (line, why) in enumerate(BAD_LINES.items(), first):
        assert any(h.line == number and why in h.why for h in hits), (line, [str(h) for h in hits])
    assert {h.line for h in hits} == set(range(first, first + len(BAD_LINES)))
    assert all(str(h).startswith(f"{path}:{h.line}: ") for h in hits)


def test_the_scan_accepts_scoped_enums_guarded_imports_and_text_in_strings(tmp_path):
    path = tmp_path / "good.py"
    path.write_text(GOOD_SOURCE, encoding="utf-8")
    assert [str(h) for h in scan([str(path)])] == []


def test_the_qvariant_fallback_is_only_allowed_under_the_qgis_version_test(tmp_path):
    path = tmp_path / "fallback.py"
    path.write_text(GOOD_SOURCE.replace("QGIS_VERSION_INT >= 33800", "x"), encoding="utf-8")
    assert [h.line for h in scan([str(path)])] == [14]


def test_the_scan_covers_the_plugin_sources_and_skips_the_tests():
    shown = {os.path.relpath(p, REPO_ROOT) for p in plugin_sources()}
    assert "plugin.py" in shown and "__init__.py" in shown
    for folder in ("ui", "processing", "qgis_bridge"):
        if os.path.isdir(os.path.join(REPO_ROOT, folder)):
            assert any(p.startswith(folder + os.sep) for p in shown), folder
    assert not any(p.split(os.sep)[0] in SKIPPED_FOLDERS or p.startswith(".") for p in shown)


def test_the_plugin_sources_are_qt6_ready_and_the_metadata_says_so():
    hits = scan(plugin_sources())
    assert declares_qt6_support() == (not hits), (
        "metadata.txt supportsQt6 must be True exactly when the Qt6 scan is clean")
    assert not hits, "Qt6 readiness:\n" + "\n".join(map(str, hits))


if __name__ == "__main__":
    found = scan(plugin_sources())
    print("\n".join(map(str, found)) or "Qt6 scan: clean")
    sys.exit(1 if found else 0)
