"""Structural checks on a decoded tensor table.

A header can decode cleanly and still describe impossible data. These checks find that:

    unknown-type    a ggml type id no version of ggml defines            (fatal)
    removed-type    a type ggml has removed (e.g. the repacked Q4_0_4_4)  (fatal)
    row-size        ne0 is not a whole number of blocks of the type       (fatal)
    duplicate-name  two tensors share a name                              (fatal)
    misaligned      a tensor does not start on the file's alignment       (fatal)
    truncated       a tensor runs past the end of the file                (fatal)
    overlap         two tensors share bytes                               (fatal)
    gap             unused bytes between tensors beyond alignment padding (not fatal: legal, but odd)

A strict open raises on the first fatal problem; `refllm inspect` prints them all and exits non-zero.
"""

from __future__ import annotations

from refllm.formats.model import ModelFile, Problem
from refllm.type_traits import GGML_TYPES

CHECKS = ("unknown-type", "removed-type", "row-size", "duplicate-name", "misaligned", "truncated",
          "overlap", "gap")


def _align_up(x: int, a: int) -> int:
    return -(-x // a) * a


def check_tensor_table(model: ModelFile) -> list[Problem]:
    """Every problem in the tensor table, in the order of the checks above."""
    problems: list[Problem] = []
    tensors = model.tensors

    for t in tensors:
        row = GGML_TYPES.get(t.ggml_type)
        where = f"tensor {t.name!r}"
        if row is None:
            problems.append(Problem("unknown-type", f"{where} has unknown ggml type id {t.ggml_type}",
                                    t.info_offset, t.name,
                                    expected=f"a type id 0..{max(GGML_TYPES)}"))
        elif row.removed and t.layout is None:
            problems.append(Problem("removed-type", f"{where} has type {row.name} (id {row.id}), which "
                                    "ggml has removed; re-convert the model from its source",
                                    t.info_offset, t.name, expected="a type current ggml can read"))
        elif t.ne and t.ne[0] % row.block_elems:
            problems.append(Problem("row-size", f"{where} has rows of {t.ne[0]} weights, not a whole "
                                    f"number of {row.name} blocks", t.info_offset, t.name,
                                    expected=f"ne0 a multiple of {row.block_elems}"))

    seen: set[str] = set()
    for t in tensors:
        if t.name in seen:
            problems.append(Problem("duplicate-name", f"tensor name {t.name!r} appears more than once",
                                    t.info_offset, t.name, expected="unique tensor names"))
        seen.add(t.name)

    for t in tensors:
        if (t.offset - model.data_offset) % model.alignment:
            problems.append(Problem("misaligned", f"tensor {t.name!r} starts at byte {t.offset}, "
                                    f"not on a {model.alignment}-byte boundary", t.offset, t.name,
                                    expected=f"an offset that is a multiple of {model.alignment}"))

    sized = sorted((t for t in tensors if t.nbytes is not None), key=lambda t: (t.offset, t.end))
    if model.file_size is not None:
        for t in sized:
            if t.end > model.file_size:
                problems.append(Problem("truncated", f"tensor {t.name!r} needs bytes {t.offset}..{t.end} "
                                        f"but the file has {model.file_size}", t.offset, t.name,
                                        expected=f"the file to be at least {t.end} bytes"))

    for prev, t in zip(sized, sized[1:]):
        if t.offset < prev.end:
            problems.append(Problem("overlap", f"tensor {t.name!r} starts at byte {t.offset}, inside "
                                    f"{prev.name!r} (bytes {prev.offset}..{prev.end})", t.offset, t.name,
                                    expected=f"a start at or after byte {prev.end}"))

    if model.container == "gguf" and sized:
        # GGUF packs tensors back to back, each padded to the alignment.
        expected_at = model.data_offset
        for t in sized:
            if t.offset > expected_at:
                problems.append(Problem("gap", f"{t.offset - expected_at} unused bytes before tensor "
                                        f"{t.name!r}", expected_at, t.name, fatal=False,
                                        expected=f"the tensor at byte {expected_at}"))
            expected_at = max(expected_at, _align_up(t.end, model.alignment))
    return problems
