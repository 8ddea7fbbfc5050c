"""`dlm-guard check PATH...`: the admission rules offline, on manifest files, for CI.

Each KubeVirt object (API group kubevirt.io) is reviewed as the API server would on CREATE:
mutate, apply the patch, validate the mutated object. There is no cluster, so the rules that
need cluster state are skipped. Objects of other groups (DataVolumes, ConfigMaps...) are not
reviewed: they are only counted in the summary on stderr. An object without a namespace is
shown with namespace "-" (JSON: null) and is never in an exempt namespace.

Exit codes: 0 nothing denied, 1 something denied, 2 unreadable input or a bad policy file.
Unreadable inputs are all reported, one line each naming the file, and what could be read is
still checked. Inputs are read within the limits of dlm_guard.safeload: regular files only,
16 MiB a file, 3 MiB a document, 100 levels of nesting, 1 M nodes after alias expansion.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import jsonpatch

from dlm_guard.domain import KUBEVIRT_GROUP, kind_of, name_of, namespace_of
from dlm_guard.safeload import (
    MAX_FILE_BYTES,
    LoadError,
    json_document,
    read_capped,
    read_regular_file,
    utf8_text,
    yaml_documents,
)
from webhook.decision import JsonPatch
from webhook.engine import (
    Context,
    Evaluation,
    evaluate,
    mutation_patch,
    parse_request,
    random_suffix,
)
from webhook.policy import PolicyError, load_policy

EXIT_OK, EXIT_DENIED, EXIT_BAD_INPUT = 0, 1, 2
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
STDIN = "-"


# --- Reading manifests ----------------------------------------------------------------
class InputError(Exception):
    """An input that cannot be read; the message names the file (and line for YAML)."""


@dataclass(frozen=True, slots=True)
class Document:
    file: str
    index: int  # 1-based position in a multi-document file
    obj: Any


@dataclass(slots=True)
class Inputs:
    """What the paths on the command line held: documents, and one line per unusable input."""

    documents: list[Document] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def manifest_files(root: Path, errors: list[str]) -> list[Path]:
    """Every *.yaml, *.yml and *.json under a directory, sorted; hidden entries skipped.

    A directory that cannot be listed is reported in `errors` and the walk goes on.
    Symlinked directories are not followed (no loops); symlinked files are, when read.
    """
    found: list[Path] = []

    def unreadable(err: OSError) -> None:
        errors.append(f"{err.filename}: cannot read: {err.strerror or err}")

    for folder, dirs, files in os.walk(root, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(Path(folder, f) for f in files
                     if f.endswith(MANIFEST_SUFFIXES) and not f.startswith("."))
    return sorted(found)


def parse_manifests(text: str, file: str) -> list[Document]:
    """Documents of a JSON file (by suffix) or a multi-document YAML stream, within the
    limits of dlm_guard.safeload (size, depth, aliases, duplicate keys)."""
    try:
        if file.endswith(".json"):
            return [Document(file, 1, json_document(text))]
        return [Document(file, i, obj) for i, obj in enumerate(yaml_documents(text), 1)]
    except LoadError as err:
        raise InputError(f"{file}: {err}") from None


def read_text(path: Path) -> str:
    try:
        return utf8_text(read_regular_file(path, MAX_FILE_BYTES))
    except LoadError as err:
        raise InputError(f"{path}: {err}") from None


def read_stdin(stdin: BinaryIO) -> str:
    try:
        return utf8_text(read_capped(stdin, MAX_FILE_BYTES))
    except LoadError as err:
        raise InputError(f"<stdin>: {err}") from None


def read_inputs(arguments: Iterable[str], stdin: BinaryIO) -> Inputs:
    """Every document of every argument; an unusable file is reported and skipped."""
    inputs = Inputs()
    for argument in arguments:
        if argument == STDIN:
            _add(inputs, lambda: parse_manifests(read_stdin(stdin), "<stdin>"))
            continue
        path = Path(argument)
        files = manifest_files(path, inputs.errors) if path.is_dir() else [path]
        for file in files:
            _add(inputs, partial(_read_file, file))
    return inputs


def _read_file(file: Path) -> list[Document]:
    return parse_manifests(read_text(file), str(file))


def _add(inputs: Inputs, read: Callable[[], list[Document]]) -> None:
    try:
        inputs.documents.extend(read())
    except InputError as err:
        inputs.errors.append(str(err))


def objects_of(document: Document) -> Iterator[Mapping[str, Any]]:
    """The Kubernetes objects in a document: itself, or the items of a `kind: *List`."""
    obj = document.obj
    if not isinstance(obj, Mapping):
        return
    items = obj.get("items")
    if kind_of(obj).endswith("List") and isinstance(items, list):
        yield from (item for item in items if isinstance(item, Mapping))
    else:
        yield obj


def is_kubevirt(obj: Mapping[str, Any]) -> bool:
    api_version = obj.get("apiVersion")
    return isinstance(api_version, str) and api_version.rpartition("/")[0] == KUBEVIRT_GROUP


# --- Reviewing one object -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CheckResult:
    document: Document
    kind: str
    namespace: str | None
    name: str
    patch: JsonPatch
    evaluation: Evaluation

    @property
    def verdict(self) -> str:
        return self.evaluation.verdict

    def headline(self) -> str:
        return f"{self.verdict} {self.kind} {self.namespace or '-'}/{self.name or '-'}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "namespace": self.namespace, "name": self.name,
            "verdict": self.verdict, "file": self.document.file,
            "document": self.document.index, "patch": self.patch,
            "findings": [{"rule": r.finding.rule, "path": r.finding.path,
                          "message": r.finding.message, "mode": r.mode.value}
                         for r in self.evaluation.findings],
        }


def create_request(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The AdmissionReview request the API server would send for `kubectl create`."""
    group, _, version = str(obj.get("apiVersion")).rpartition("/")
    return {"uid": "dlm-guard-check", "operation": "CREATE", "object": obj,
            "kind": {"group": group, "version": version, "kind": kind_of(obj)},
            "namespace": namespace_of(obj), "name": name_of(obj)}


def check_object(obj: Mapping[str, Any], document: Document, ctx: Context) -> CheckResult:
    request = parse_request(create_request(obj))
    patch = mutation_patch(request, ctx)
    mutated = jsonpatch.apply_patch(obj, patch) if patch else obj
    return CheckResult(document=document, kind=kind_of(obj),
                       namespace=namespace_of(obj) or None, name=name_of(obj), patch=patch,
                       evaluation=evaluate(replace(request, object=mutated), ctx))


def check_documents(documents: Iterable[Document], ctx: Context) -> tuple[list[CheckResult], int]:
    """Results for every KubeVirt object, and how many other objects were skipped."""
    results, skipped = [], 0
    for document in documents:
        for obj in objects_of(document):
            if is_kubevirt(obj):
                results.append(check_object(obj, document, ctx))
            else:
                skipped += 1
    return results, skipped


# --- Output ---------------------------------------------------------------------------
def format_text(results: Sequence[CheckResult]) -> str:
    lines = []
    for result in results:
        lines.append(result.headline())
        lines.extend(f"  {rated.mode.value}: {rated}" for rated in result.evaluation.findings)
    return "".join(f"{line}\n" for line in lines)


def format_json(results: Sequence[CheckResult]) -> str:
    return json.dumps([r.to_json() for r in results], indent=2, default=str) + "\n"


def exit_code(results: Sequence[CheckResult], input_errors: int) -> int:
    if input_errors:
        return EXIT_BAD_INPUT
    return EXIT_DENIED if any(r.verdict == "DENY" for r in results) else EXIT_OK


# --- Command line ---------------------------------------------------------------------
def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="manifest file, directory (recursive *.yaml, *.yml, *.json) "
                             "or - for stdin; multi-document YAML is fine")
    parser.add_argument("--config", metavar="PATH", help="policy file, as for serve")
    parser.add_argument("--output", "-o", choices=("text", "json"), default="text",
                        help="text: one line per object, findings indented; json: a list")


def register_check(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check", help="run the admission rules offline on manifest files",
        description="Review each KubeVirt object as a CREATE (mutate, then validate) without "
                    "a cluster. Exit 0: nothing denied, 1: something denied, 2: bad input.")
    add_check_arguments(parser)
    parser.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.config)
    except PolicyError as err:
        print(f"dlm-guard check: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    inputs = read_inputs(args.paths, sys.stdin.buffer)
    for error in inputs.errors:
        print(f"dlm-guard check: {error}", file=sys.stderr)
    ctx = Context(policy=policy, cluster=None, new_id=random_suffix)
    results, skipped = check_documents(inputs.documents, ctx)
    sys.stdout.write(format_json(results) if args.output == "json" else format_text(results))
    print(f"dlm-guard check: {len(results)} KubeVirt object(s) checked, {skipped} other "
          "object(s) skipped; rules needing cluster state not run", file=sys.stderr)
    return exit_code(results, len(inputs.errors))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dlm-guard check")
    add_check_arguments(parser)
    return run_check(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
