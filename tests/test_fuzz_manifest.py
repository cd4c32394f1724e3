"""Fuzzing the export manifest reader and `verify_dir` (issue 26): a real export's manifest.json, damaged at
the JSON level (wrong types, missing keys, extra and path-traversing file names, wrong hashes, huge numbers,
deep nesting, broken text) or with its listed files replaced (other bytes with the manifest edited to match,
links, FIFOs, folders, nothing). Every case ends in a report or KaecError, within the bounds of
tests/fuzzing.py.

Cost: most cases fail on the manifest or a file's size or sha256 (about a millisecond); the rest load and
run models, mostly the ONNX pair (see KINDS)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kaecompress.errors import KaecError
from kaecompress.exporters import ARTEFACTS, MANIFEST, export, verify_dir
from kaecompress.exporters.manifest import CODEC_FILES

from fuzzing import FUZZ, bounded, peak_mb

DEEP = "__deep__"  # a value replaced by deeply nested lists once the manifest is JSON text
TRAVERSING = ["../encoder.onnx", "/etc/passwd", "sub/encoder.onnx", "", ".", "..", "encoder.onnx/",
              "encoder.onnx\x00", "ENCODER.ONNX", "encoder.onnx ", "..\\encoder.onnx", "~/.ssh/id_rsa"]


@pytest.fixture(scope="module")
def fuzz_export(tmp_path_factory):
    """An untrained tiny model exported in all three formats, the manifest as written, a working copy of the
    folder the cases damage, and the memory baseline."""
    from kaecompress.nn.models import CNNKAE

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = CNNKAE(latent_dim=8, channels=[4], kernel_size=7, decoder_kae_order=2, output_activation="sigmoid")
    images = torch.rand(40, 1, 28, 28)
    home = tmp_path_factory.mktemp("fuzz-manifest")
    export(model, home / "exported", images=images)
    work = home / "work"
    shutil.copytree(home / "exported", work)
    originals = {p.name: p.read_bytes() for p in work.iterdir() if p.name != MANIFEST}
    manifest = json.loads((work / MANIFEST).read_text())
    verify_dir(work, model, images)  # the undamaged export verifies (and the runtimes are warm)
    yield model, images, work, manifest, originals, peak_mb()
    torch.set_num_threads(threads)


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**18, max_value=10**400),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=80),
                      st.sampled_from(["", "0" * 64, "f" * 64, "F" * 64, "onnx", "pt2", "encoder", "decoder", DEEP]))
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
TOP_KEYS = ["format_version", "weights_sha256", "files"]
ENTRY_KEYS = ["sha256", "bytes", "format", "part"]
# Weighted so that most cases fail on the manifest, a size or a sha256 (milliseconds); "file-bytes" cases and
# those that leave the manifest valid (a key it need not hold deleted, text edited harmlessly) load and run
# models: 50 ms for the ONNX pair, 150-250 ms for torch.export's, on this machine.
# (Hypothesis draws the first and last of a list more often than the rest: both are cheap kinds.)
KINDS = ["set", "delete", "add", "swap", "hash", "file-bytes", "size", "deep", "text", "type", "delete",
         "add", "hash", "file-kind", "deep", "file-bytes", "text", "set", "set"]


@st.composite
def cases(draw):
    """(formats listed, manifest edits, manifest text edit, file replacements) for one case."""
    kind = draw(st.sampled_from(KINDS))
    if kind == "file-bytes":  # the pair of the file replaced, so that every runtime meets damaged files
        name = draw(st.sampled_from(list(ARTEFACTS)))
        formats = (ARTEFACTS[name][0],)
    else:  # the ONNX pair: the undamaged rest is cheapest to verify
        formats = ("onnx",)
        name = draw(st.sampled_from(["encoder.onnx", "decoder.onnx"]))
    names = [n for n, (fmt, _) in ARTEFACTS.items() if fmt in formats]
    edits, text_edit, files = [], None, {}
    if kind == "set":
        where = draw(st.sampled_from(["top", "entry", "entry"]))
        key = draw(st.sampled_from(TOP_KEYS if where == "top" else ENTRY_KEYS))
        edits.append((where, name, key, draw(json_value)))
    elif kind == "delete":
        where = draw(st.sampled_from(["top", "entry", "whole entry"]))
        keys = TOP_KEYS + ["source", "verification"] if where == "top" else ENTRY_KEYS
        edits.append(("delete " + where, name, draw(st.sampled_from(keys)), None))
    elif kind == "add":
        extra = draw(st.sampled_from(TRAVERSING + list(ARTEFACTS) + list(CODEC_FILES)) | st.text(max_size=30))
        edits.append(("add", extra, draw(st.sampled_from(names)), draw(st.none() | json_value)))
    elif kind == "swap":
        edits.append(("swap", name, draw(st.sampled_from(list(ARTEFACTS))), None))
    elif kind == "hash":
        position = draw(st.integers(0, 63))
        edits.append(("hash", name, position, draw(st.sampled_from("0123456789abcdefABCDEF "))))
    elif kind == "size":
        edits.append(("entry", name, "bytes", draw(st.integers(-(10**30), 10**30) | st.sampled_from(
            [0, 1, -1, 2**31, 2**63, 10**400, True, 1.0, 1e308, "100"]))))
    elif kind == "deep":
        where = draw(st.sampled_from(["top", "entry", "files"]))
        edits.append(("deep " + where, name, draw(st.sampled_from(TOP_KEYS + ENTRY_KEYS)), None))
        text_edit = ("deep", draw(st.integers(1, 100_000)))
    elif kind == "text":
        text_edit = (draw(st.sampled_from(["truncate", "insert", "replace"])), draw(st.integers(0, 4000)),
                     draw(st.binary(max_size=40)))
    elif kind == "type":
        edits.append(("type", draw(st.sampled_from(["manifest", "files", "entry"])), name,
                      draw(st.sampled_from([[], "", 0, None, True, [1, 2], "files"]))))
    elif kind == "file-bytes":
        source = draw(st.sampled_from(["random", "random", "truncated", "truncated", "flipped", "other", "same"]))
        files[name] = ("bytes", source, draw(st.binary(min_size=1, max_size=200)), draw(st.integers(0, 10**6)),
                       draw(st.sampled_from(list(ARTEFACTS))))
    else:
        files[name] = ("kind", draw(st.sampled_from(["symlink", "fifo", "folder", "missing", "link-to-dev-zero"])))
    return formats, edits, text_edit, files


def _apply(manifest: dict, formats, edits) -> dict:
    m = copy.deepcopy(manifest)
    m["files"] = {n: info for n, info in m["files"].items() if n not in ARTEFACTS or ARTEFACTS[n][0] in formats}
    for op, name, key, value in edits:
        entry = m["files"].get(name, {})
        if op == "top":
            m[key] = value
        elif op == "entry":
            entry[key] = value
        elif op == "delete top":
            m.pop(key, None)
        elif op == "delete entry":
            entry.pop(key, None)
        elif op == "delete whole entry":
            m["files"].pop(name, None)
        elif op == "add":
            m["files"][name] = copy.deepcopy(manifest["files"][key]) if value is None else value
        elif op == "swap":
            m["files"][name], m["files"][key] = manifest["files"][key], manifest["files"][name]
        elif op == "hash":
            digest = entry["sha256"]
            entry["sha256"] = digest[:key] + value + digest[key + 1:]
        elif op.startswith("deep"):
            target = {"deep top": m, "deep entry": entry, "deep files": m["files"]}[op]
            target[key if op != "deep files" else name] = DEEP
        elif op == "type":
            if name == "manifest":
                m = value
            elif name == "files":
                m["files"] = value
            else:
                m["files"][key] = value
    return m


def _text(m, text_edit) -> bytes:
    text = json.dumps(m).encode()
    if text_edit is None:
        return text
    op, n, *rest = text_edit
    if op == "deep":
        return text.replace(json.dumps(DEEP).encode(), b"[" * n + b"]" * n)
    position = n % (len(text) + 1)
    if op == "truncate":
        return text[:position]
    if op == "insert":
        return text[:position] + rest[0] + text[position:]
    return text[:position] + rest[0] + text[position + len(rest[0]):]


def _damage_file(work, originals, manifest, name, how) -> None:
    path = work / name
    if how[0] == "kind":
        path.unlink()
        kind = how[1]
        if kind == "symlink":
            path.symlink_to(work.parent / "exported" / name)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "folder":
            path.mkdir()
        elif kind == "link-to-dev-zero":
            path.symlink_to("/dev/zero")
        return
    _, source, noise, position, other = how
    data = originals[name]
    data = {"random": noise, "truncated": data[:position % len(data)] or data[:1],
            "flipped": data[:position % len(data)] + bytes(b ^ 0xA5 for b in noise[:8])
            + data[position % len(data) + len(noise[:8]):],
            "other": originals[other], "same": data}[source]
    path.write_bytes(data)
    if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) and isinstance(
            manifest["files"].get(name), dict):  # edited to match: only loading the file can tell
        manifest["files"][name].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))


def _restore(work, originals, names) -> None:
    for name in names:
        path = work / name
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        elif path.exists() or path.is_symlink():
            path.unlink()
        path.write_bytes(originals[name])


@FUZZ
@given(case=cases())
def test_damaged_manifests_end_in_a_report_or_kaec_error(fuzz_export, case):
    model, images, work, manifest, originals, baseline = fuzz_export
    formats, edits, text_edit, files = case
    m = _apply(manifest, formats, edits)
    try:
        for name, how in files.items():
            _damage_file(work, originals, m, name, how)
        (work / MANIFEST).write_bytes(_text(m, text_edit))
        with bounded(baseline):
            try:
                report = verify_dir(work, model, images)
            except KaecError as e:
                assert str(e) and "\n" not in str(e), repr(e)
            else:
                listed = {n for n in m["files"] if n in ARTEFACTS}
                assert set(report) == listed and listed
    finally:
        _restore(work, originals, files)


def test_a_manifest_listing_one_pair_loads_only_that_pair(fuzz_export):
    """What most cases start from: the ONNX pair listed alone, keys the check does not need changed, verifies,
    and an unlisted file that is no model is never loaded."""
    model, images, work, manifest, originals, _ = fuzz_export
    m = _apply(manifest, ("onnx",), [("top", "", "source", None), ("top", "", "verification", [1])])
    (work / MANIFEST).write_text(json.dumps(m))
    (work / "encoder.pt").write_bytes(b"unlisted, so never loaded")
    try:
        assert set(verify_dir(work, model, images)) == {"encoder.onnx", "decoder.onnx"}
    finally:
        _restore(work, originals, ["encoder.pt"])


CRASHERS = sorted((Path(__file__).parent / "data" / "crashers" / "manifest").iterdir())


@pytest.mark.parametrize("crasher", CRASHERS, ids=[p.name for p in CRASHERS])
def test_manifests_that_once_crashed_are_refused(fuzz_export, crasher):
    """Each as the manifest.json of a folder holding a whole export: once a RecursionError, or "all verified"
    with nothing verified."""
    model, images, work, _, _, _ = fuzz_export
    (work / MANIFEST).write_bytes(crasher.read_bytes())
    with pytest.raises(KaecError, match="^" + re.escape(f"{work / MANIFEST}: ")) as e:
        verify_dir(work, model, images)
    assert "\n" not in str(e.value)


def test_the_manifest_crashers_are_there():
    assert {p.name for p in CRASHERS} >= {"deep.json", "deep-in-files.json", "files-empty.json"}
