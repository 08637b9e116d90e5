#!/usr/bin/env bash
# Install the OpenMMLab stack (mmcv 2.1.0, mmengine 0.10.7, mmdet 3.3.0, mmsegmentation 1.2.2) into
# the venv of $PY next to the installed torch, without changing the versions of torch, torchvision,
# numpy or opencv (checked before and after).
#
# PyPI has only mmcv's source distribution, so when no cached wheel fits the installed torch the
# wheel is built from source (recipe in ../shared/notes/environment.md):
#   - setuptools<70 (mmcv's setup.py needs pkg_resources), wheel and ninja, installed into a
#     throw-away directory put first on PYTHONPATH, so the venv's own setuptools is left alone;
#   - torch >= 2.10 headers need C++20: -std=c++14 / -std=c++17 become -std=c++20 in setup.py;
#   - MMCV_WITH_OPS=1 MAX_JOBS=$MAX_JOBS pip wheel --no-build-isolation --no-deps .
# The wheel is cached under $VITPE_WHEEL_CACHE/torch-<version>/ (default ~/.cache/vitpe-wheels),
# outside the clone, so later runs (and fresh venvs) reuse it: about 11 minutes on 2 idle cores.
#
# Usage: scripts/install_mm.sh            (PY=.venv/bin/python by default)
#        PY=/path/to/python MAX_JOBS=4 scripts/install_mm.sh
set -euo pipefail

PY=${PY:-.venv/bin/python}
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute: the build runs in the sources
MAX_JOBS=${MAX_JOBS:-2}
CACHE=${VITPE_WHEEL_CACHE:-$HOME/.cache/vitpe-wheels}
MMCV=2.1.0
MMENGINE=0.10.7
MMDET=3.3.0
MMSEG=1.2.2

pinned() {  # versions that must not move
    "$PY" - <<'EOF'
import importlib.metadata as md
for name in ("torch", "torchvision", "numpy", "opencv-python-headless", "opencv-python"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
EOF
}

if "$PY" - <<EOF 2>/dev/null
import mmcv, mmcv.ops, mmengine, mmdet, mmseg
assert (mmcv.__version__, mmengine.__version__, mmdet.__version__, mmseg.__version__) == \
    ("$MMCV", "$MMENGINE", "$MMDET", "$MMSEG")
EOF
then
    echo "install_mm: mmcv $MMCV, mmengine $MMENGINE, mmdet $MMDET, mmseg $MMSEG already installed"
    exit 0
fi

TORCH=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")
WHEELS="$CACHE/torch-$TORCH"
mkdir -p "$WHEELS"
BEFORE=$(pinned)
CONSTRAINTS=$(mktemp)
echo "$BEFORE" > "$CONSTRAINTS"

WHEEL=$(ls "$WHEELS"/mmcv-$MMCV-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$WHEEL" ]; then
    echo "install_mm: no cached mmcv $MMCV wheel for torch $TORCH; building from source (about 11 min on 2 cores)"
    BUILD=$(mktemp -d)
    trap 'rm -rf "$BUILD"' EXIT
    "$PY" -m pip install -q --target "$BUILD/tools" "setuptools<70" wheel ninja
    # (pip prepares the sdist's metadata while downloading: that too needs the old setuptools)
    PYTHONPATH="$BUILD/tools" "$PY" -m pip download -q --no-build-isolation --no-deps \
        --no-binary :all: "mmcv==$MMCV" -d "$BUILD"
    tar -xzf "$BUILD"/mmcv-$MMCV.tar.gz -C "$BUILD"
    SRC="$BUILD/mmcv-$MMCV"
    sed -i -e 's/-std=c++14/-std=c++20/g' -e 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
    (cd "$SRC" && PYTHONPATH="$BUILD/tools" PATH="$BUILD/tools/bin:$PATH" \
        MMCV_WITH_OPS=1 MAX_JOBS=$MAX_JOBS \
        "$PY" -m pip wheel --no-build-isolation --no-deps -w "$BUILD/dist" .)
    WHEEL=$(ls "$BUILD"/dist/mmcv-$MMCV-*.whl | head -n 1)
    cp "$WHEEL" "$WHEELS/"
    WHEEL="$WHEELS/$(basename "$WHEEL")"
    echo "install_mm: cached $WHEEL"
fi

# -c pins torch, torchvision, numpy and opencv at their installed versions: pip fails rather than
# move them. mmengine's wheel asks for opencv-python, which would put a second cv2 over the headless
# build the rest of vitpe uses (pip also resolves the requirements of an installed mmengine when it
# installs mmcv), so mmengine and mmcv go in without dependencies and their requirements (but
# opencv) are listed here; pip then reports "mmengine requires opencv-python, which is not
# installed": expected, opencv-python-headless provides cv2.
"$PY" -m pip install -q -c "$CONSTRAINTS" addict yapf rich termcolor packaging Pillow pyyaml matplotlib
"$PY" -m pip install -q -c "$CONSTRAINTS" --no-deps "mmengine==$MMENGINE" "$WHEEL"
"$PY" -m pip install -q -c "$CONSTRAINTS" "mmdet==$MMDET" "mmsegmentation==$MMSEG" \
    pycocotools ftfy regex shapely scipy terminaltables prettytable six
rm -f "$CONSTRAINTS"

AFTER=$(pinned)
if [ "$BEFORE" != "$AFTER" ]; then
    echo "install_mm: pinned versions changed:" >&2
    diff <(echo "$BEFORE") <(echo "$AFTER") >&2 || true
    exit 1
fi
"$PY" -c "import mmcv.ops, mmdet, mmseg; print('install_mm: mmcv', mmcv.__version__, 'mmdet', mmdet.__version__, 'mmseg', mmseg.__version__)"
