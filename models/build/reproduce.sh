#!/usr/bin/env bash
# Rebuild the shipped EfficientNet from scratch and compare it with the cards.
#
#   models/build/reproduce.sh            # from the repository root or anywhere
#
# 1. a fresh venv (models/build/.cache/reproduce-venv, removed first) with the pinned
#    models/build/requirements.txt and the project itself (no other packages);
# 2. the fp32 export (build_efficientnet.py), its sha256 against the one the int8 card records;
# 3. the eval set (make_eval.py; needs Debian's opencv-doc) and the int8 quantization with the
#    exact command of the int8 card, its sha256 against the card;
# 4. the agreement figures against the card's [[measured]] entry for this CPU class.
# Either everything matches, or each difference is printed with why it is harmless (or not).
# Exit status: 0 when the files match (figures of another CPU class are reported, not judged).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=models/build/.cache/reproduce-venv
OUT=models/build/.cache/reproduce
CARD=models/efficientnet-lite0-int8.toml
PYTHON=${PYTHON:-python3}
status=0

echo "== fresh venv $VENV"
rm -rf "$VENV" "$OUT"
mkdir -p "$OUT"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet -r models/build/requirements.txt
# the project's other dependencies do not touch model bytes; the pinned ones above satisfy it
"$VENV/bin/pip" install --quiet -e . -c models/build/requirements.txt
"$VENV/bin/pip" freeze > "$OUT/pip-freeze.txt"

echo "== fp32 export"
"$VENV/bin/python" models/build/build_efficientnet.py
fp32_sha=$(sha256sum models/build/.cache/efficientnet-lite0-fp32.onnx | cut -d' ' -f1)
want_fp32=$(grep -o 'efficientnet-lite0-fp32 (sha256 [0-9a-f]*' "$CARD" | grep -o '[0-9a-f]\{64\}')
if [ "$fp32_sha" = "$want_fp32" ]; then
    echo "fp32: sha256 $fp32_sha matches the int8 card"
else
    echo "fp32: DIFFERENT sha256 $fp32_sha (card records $want_fp32)"
    echo "      BatchNorm is folded in float64 numpy (build_efficientnet.py: _fold), so the weights do"
    echo "      not depend on torch's CPU kernels; a difference here is another torch/onnx/protobuf"
    echo "      (compare $OUT/pip-freeze.txt with models/build/requirements.txt) and is NOT harmless"
    echo "      until the int8 file below matches too."
    status=1
fi

echo "== eval set"
"$VENV/bin/python" models/build/make_eval.py

echo "== int8, with the card's own command"
cmd=$(sed -n 's/^produced_by = "\(.*\)"$/\1/p' "$CARD")
cmd=${cmd#edgeproof }
cmd=${cmd//--out models\/efficientnet-lite0-int8.onnx/--out $OUT\/efficientnet-lite0-int8.onnx}
echo "edgeproof $cmd --json"
# shellcheck disable=SC2086
"$VENV/bin/python" -m agent $cmd --json > "$OUT/report.json"
"$VENV/bin/python" - "$OUT/report.json" "$CARD" <<'PY' || status=1
import json, sys, tomllib
report = json.load(open(sys.argv[1]))
card = tomllib.load(open(sys.argv[2], "rb"))
ok = report["int8_sha256"] == card["sha256"]
print(f"int8: sha256 {report['int8_sha256']} {'matches' if ok else 'DIFFERS from ' + card['sha256']}")
if not ok:
    print("      the calibration ranges come from onnxruntime's fp32 kernels on this CPU; a last-bit")
    print("      difference there moves a scale by one ulp.  Harmless if the figures below match.")
a = report["agreement"]
mine = {"top1_confident": a["top1_confident"], "top1_all": a["top1_all"], "top5_contains": a["top5_contains"]}
same_class = [m for m in card.get("measured", []) if m["cpu"] == report["cpu"]]
print(f"figures on {report['cpu']} ({', '.join(report['cpu_features']) or 'no avx2'}): "
      + ", ".join(f"{k} {v:.4f}" for k, v in mine.items()))
if not same_class:
    print(f"      the card has no figure for {report['cpu']}: not compared "
          f"(card classes: {', '.join(m['cpu'] for m in card.get('measured', []))})")
else:
    ref = same_class[0]
    for key, value in mine.items():
        if abs(ref[key] - value) > 1e-4:
            print(f"      {key}: card {ref[key]:.4f}, here {value:.4f}  DIFFERENT")
            ok = False
    if ok:
        print("      equal to the card's figures for this CPU class")
sys.exit(0 if ok else 1)
PY
exit $status
