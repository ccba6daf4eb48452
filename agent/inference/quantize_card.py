"""The model card `edgeproof models quantize` writes beside an int8 model.

The card names the int8 file and its sha256, the recipe that made it, and every figure the
accuracy gate measured, with the CPU class it was measured on (``[[measured]]``), so that a
reader of the card knows on which arithmetic each number holds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.inference.cards import LoadedCard

if TYPE_CHECKING:
    from agent.inference.quantize import Report


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_table(header: str, data: dict[str, Any]) -> list[str]:
    lines = [header] if header else []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for key, value in tables:
        name = f"{header.strip('[]')}.{key}" if header else key
        lines.append("")
        lines.extend(_toml_table(f"[{name}]", value))
    return lines


_INT_NAME = {"uint8": "U8", "int8": "S8"}


def int8_card(loaded: LoadedCard, out: Path, report: Report, produced_by: str) -> str:
    """The card of the quantized model: the float card with the new file, hash, provenance and figures."""
    card = loaded.card
    data = card.model_dump(mode="python", exclude_none=True)
    stem_id = card.id[: -len("-fp32")] if card.id.endswith("-fp32") else card.id
    data["id"] = f"{stem_id}-int8"
    data["file"] = out.name
    data["sha256"] = report.int8_sha256
    data["produced_by"] = produced_by
    a = report.agreement
    data["source"] = (
        f"{card.source}; quantized from {card.id} (sha256 {card.sha256}) by edgeproof models quantize"
    )
    r = report.recipe
    lo, hi = a.top1_confident_ci95
    data["description"] = (
        f"{card.description.split(',')[0] if card.description else card.id}, ONNX Runtime static int8 "
        f"({r.quant_format.upper()}, {_INT_NAME[r.activation_type]} activations, {_INT_NAME[r.weight_type]} "
        f"weights, {'per-channel' if r.per_channel else 'per-tensor'}, "
        f"{'7-bit weights (reduce_range), ' if r.reduce_range else ''}{r.calibrate_method}). Measured on "
        f"{report.cpu}, {report.eval_set}: top-1 agreement {percent(a.top1_all)} (all), "
        f"{percent(a.top1_confident)} [95% CI {percent(lo)}-{percent(hi)}] on the {a.confident} with fp32 "
        f"softmax >= 0.5, fp32 top-1 in int8 top-5 {percent(a.top5_contains)}; {report.fp32_ms:.2f} ms fp32 vs "
        f"{report.int8_ms:.2f} ms int8 ({report.speedup:.2f}x, {report.threads} threads, {report.cpu}). "
        "Other CPU classes: see [[measured]]"
    )
    data["measured"] = []
    if a.top1_confident is not None:
        data["measured"] = [
            {
                "cpu": report.cpu,
                "eval_set": report.eval_set,
                "images": a.holdout,
                "confident": a.confident,
                "top1_confident": round(a.top1_confident, 4),
                "top1_confident_ci95": [round(lo, 4), round(hi, 4)],
                "top1_all": round(a.top1_all, 4),
                "top5_contains": round(a.top5_contains, 4),
                "speedup": report.speedup if report.speedup > 0 else None,
            }
        ]
    data.pop("challenge", None)  # measured across CPU classes, not by this run (docs/models.md)
    decoder = data["decoder"]
    if decoder.get("labels"):
        label_path = (loaded.path.parent / decoder["labels"]).resolve()
        decoder["labels"] = os.path.relpath(label_path, out.parent.resolve())
    order = ["id", "version", "format", "file", "sha256", "license", "source", "produced_by", "description"]
    ordered = {k: data[k] for k in order if k in data}
    ordered.update({k: v for k, v in data.items() if k not in ordered and k not in ("outputs", "measured")})
    lines = ["# Written by `edgeproof models quantize`; regenerate rather than edit."]
    lines.extend(_toml_table("", {k: v for k, v in ordered.items() if not isinstance(v, dict)}))
    for key, value in ordered.items():
        if isinstance(value, dict):
            lines.append("")
            lines.extend(_toml_table(f"[{key}]", value))
        if key == "input":
            for output in data["outputs"]:
                lines.append("")
                lines.extend(_toml_table("[[outputs]]", output))
    for figure in data["measured"]:
        lines.append("")
        lines.extend(_toml_table("[[measured]]", figure))
    return "\n".join(lines) + "\n"
