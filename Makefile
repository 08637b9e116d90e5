# README's two commands: `make demo` (the main job) and `make test` (the test suite).
# Each sets up .venv first: torch==2.14.1 torchvision==0.29.1 (this machine's wheel store), then vitpe[dev];
# `make test` also installs the mm stack (scripts/install_mm.sh) for tests/test_mm.py.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# mmcv 2.1.0 (built from source for this torch, about 11 min on 2 cores, cached under
# ~/.cache/vitpe-wheels), mmengine, mmdet 3.3, mmsegmentation 1.2: tests/test_mm.py needs them
$(VENV)/.mm-installed: $(VENV)/.installed scripts/install_mm.sh
	PY=$(PY) scripts/install_mm.sh
	touch $@

mm: $(VENV)/.mm-installed

demo: venv
	$(PY) tools/study.py --config configs/study_position_64.yaml --output study

# README's dense figures (outside make test; rerunning resumes): Mask R-CNN over the micro rope_mixed trunk and
# UPerNet over the micro rope_mixed, ape and decomposed trunks (flip; and large-scale jitter), 3 seeds each, then
# every run swept over input sizes (about 65 minutes on 2 cores)
DENSE_SIZES = 64 96 128 192 256 384 512
DENSE_SEG_SCHEMES = rope_mixed ape decomposed
dense: venv
	for s in 0 1 2; do $(PY) tools/train_det.py --config configs/dense/maskrcnn_micro_128.yaml --seed $$s \
	    --output dense/det/rope_mixed/seed$$s --resume --quiet || exit 1; done
	for m in $(DENSE_SEG_SCHEMES); do for s in 0 1 2; do $(PY) tools/train_seg.py \
	    --config configs/dense/upernet_micro_128.yaml --model vitpe_micro_patch16_$${m}_64 --seed $$s \
	    --output dense/seg/$$m/seed$$s --resume --quiet || exit 1; done; done
	for m in $(DENSE_SEG_SCHEMES); do for s in 0 1 2; do $(PY) tools/train_seg.py \
	    --config configs/dense/upernet_micro_128.yaml --augment lsj --model vitpe_micro_patch16_$${m}_64 \
	    --seed $$s --output dense/seg_lsj/$$m/seed$$s --resume --quiet || exit 1; done; done
	for run in det seg seg_lsj; do $(PY) tools/eval_dense.py --checkpoint dense/$$run/*/seed*/best.pth \
	    --eval-sizes $(DENSE_SIZES) --strategy none pi yarn --output dense/$${run}_sweep || exit 1; done

showcase: venv
	$(PY) tools/showcase.py

test: venv mm
	$(PY) -m pytest -n 2 -q tests

catalogue: venv
	$(PY) tools/make_catalogue.py

.PHONY: venv mm demo dense showcase test catalogue
