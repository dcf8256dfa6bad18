#!/usr/bin/env bash
# Puts what floe-inference needs at run time under <workspace>/.floe-runtime:
#   onnxruntime/libonnxruntime.so.1.31.1   ONNX Runtime, from the official PyPI wheel
#   models/ppocr/{det,rec,cls}.onnx        PP-OCRv4 det/rec + mobile v2 cls, from rapidocr-onnxruntime
#   fonts/DejaVuSans.ttf                   font the OCR tests and benchmark render text with
# Idempotent: prints nothing and downloads nothing when everything is already there.
# Reaches only PyPI (pip) and, for the font when it is not installed, Debian (apt-get).
set -euo pipefail

ORT_VERSION=1.31.1
RAPIDOCR_VERSION=1.4.4
# Fallback font source when Debian's fonts-dejavu-core cannot be installed.
MATPLOTLIB_VERSION=3.10.7

workspace="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runtime_dir="${FLOE_RUNTIME_DIR:-$workspace/.floe-runtime}"
ort_lib="$runtime_dir/onnxruntime/libonnxruntime.so.$ORT_VERSION"
models_dir="$runtime_dir/models/ppocr"
font="$runtime_dir/fonts/DejaVuSans.ttf"

if [[ -s "$ort_lib" && -s "$models_dir/det.onnx" && -s "$models_dir/rec.onnx" \
      && -s "$models_dir/cls.onnx" && -s "$font" ]]; then
  exit 0
fi

say() { echo "fetch-runtime: $*" >&2; }
die() { say "error: $*"; exit 1; }

command -v python3 >/dev/null || die "python3 is required (pip downloads the wheels, zipfile unpacks them)"
python3 -m pip --version >/dev/null 2>&1 || die "python3 -m pip is required"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Downloads one wheel (no dependencies) into $tmp/<name> and prints its path.
fetch_wheel() {
  local spec="$1" dest="$tmp/$2"
  mkdir -p "$dest"
  python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$dest" "$spec" >&2 || die "pip could not download $spec"
  local wheel
  wheel="$(ls "$dest"/*.whl 2>/dev/null | head -n1)"
  [[ -n "$wheel" ]] || die "no wheel for $spec in $dest"
  echo "$wheel"
}

# Copies one member of a wheel (a zip) to a path, atomically (tmp file + rename).
extract_member() {
  local wheel="$1" member="$2" target="$3"
  mkdir -p "$(dirname "$target")"
  python3 - "$wheel" "$member" "$target.part" <<'PY' || die "cannot extract $2 from $(basename "$1")"
import shutil, sys, zipfile
wheel, member, target = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(target, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  mv -f "$target.part" "$target"
}

if [[ ! -s "$ort_lib" ]]; then
  say "downloading onnxruntime==$ORT_VERSION from PyPI"
  wheel="$(fetch_wheel "onnxruntime==$ORT_VERSION" ort)"
  extract_member "$wheel" "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" "$ort_lib"
fi

if [[ ! -s "$models_dir/det.onnx" || ! -s "$models_dir/rec.onnx" || ! -s "$models_dir/cls.onnx" ]]; then
  say "downloading rapidocr-onnxruntime==$RAPIDOCR_VERSION (PP-OCR models) from PyPI"
  wheel="$(fetch_wheel "rapidocr-onnxruntime==$RAPIDOCR_VERSION" rapidocr)"
  extract_member "$wheel" rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx "$models_dir/det.onnx"
  extract_member "$wheel" rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx "$models_dir/rec.onnx"
  extract_member "$wheel" rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx "$models_dir/cls.onnx"
fi

if [[ ! -s "$font" ]]; then
  system_font=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
  if [[ ! -s "$system_font" && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    say "installing Debian's fonts-dejavu-core"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-dejavu-core; } >&2 \
      || say "apt-get could not install fonts-dejavu-core; trying PyPI"
  fi
  mkdir -p "$(dirname "$font")"
  if [[ -s "$system_font" ]]; then
    cp "$system_font" "$font.part" && mv -f "$font.part" "$font"
  else
    say "taking DejaVuSans.ttf from the matplotlib==$MATPLOTLIB_VERSION wheel on PyPI"
    wheel="$(fetch_wheel "matplotlib==$MATPLOTLIB_VERSION" matplotlib)"
    extract_member "$wheel" matplotlib/mpl-data/fonts/ttf/DejaVuSans.ttf "$font"
  fi
fi

say "ready: $runtime_dir"
