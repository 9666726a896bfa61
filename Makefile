# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the tests).
# Each creates .venv, installs torch==2.13.0 FIRST (CPU build; an unpinned torch would pull GBs of CUDA
# packages), then the package. `make test` installs the Debian packages napari needs when run as root.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH := torch==2.13.0
DEBIAN_PKGS := xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-xinput0 libdbus-1-3 \
	libfontconfig1 libxkbcommon-x11-0 libxcb-render-util0 libxcb-image0 libxcb-shape0 libgl1 libegl1

.PHONY: install install-test system-deps demo screenshots screenshots-real test lint clean results weights intensity bench

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH)
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install --quiet -e ".[napari,test]"
	touch $@

install: $(VENV)/.installed

system-deps:
	@missing=""; for p in $(DEBIAN_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = "0" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
		echo "napari needs these Debian packages (for the demo and the tests); as root run: apt-get install$$missing"; \
		exit 1; \
	fi

# napari with the phantom CT and all docks: segment, classify, compare, correct, fine-tune, quantify (IMAGE=path:
# your scan instead). Installs napari's Debian packages as `make test` does; on a machine without a display (no
# $DISPLAY or $WAYLAND_DISPLAY) it runs the demo under Xvfb and saves a screenshot of the window instead.
DEMO_SHOT ?= out/demo.png
demo: install system-deps
	@if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ]; then \
		$(VENV)/bin/covidseg demo $(IMAGE) --compare --correct --quantify; \
	else \
		mkdir -p $(dir $(DEMO_SHOT)); \
		echo "no display here: running the demo under Xvfb; the window is saved to $(DEMO_SHOT)"; \
		xvfb-run -a -s "-screen 0 1920x1080x24" $(VENV)/bin/covidseg demo $(IMAGE) --compare --correct --quantify \
			--run --screenshot $(DEMO_SHOT); \
	fi

# The README screenshots, made by the demo itself under Xvfb.
screenshots: install system-deps
	xvfb-run -a -s "-screen 0 1920x1200x24" $(VENV)/bin/covidseg demo --run --screenshot docs/screenshots/demo.png
	xvfb-run -a -s "-screen 0 1920x1200x24" $(VENV)/bin/covidseg demo --run --compare \
		--screenshot docs/screenshots/compare.png

test: install system-deps
	QT_API=pyqt5 xvfb-run -a -s "-screen 0 1920x1080x24" $(PY) -m pytest -q

# Screenshots of the real P002 DICOM series (needs ../shared/data), all six docks on a 1920x1080 screen: the compare
# grid, the CAM over segmented lesions, the whole window with Quantify -> docs/screenshots/p002_*.png
P002 ?= ../shared/data/covid_ct_md_dicom_P002/P002
screenshots-real: install system-deps
	xvfb-run -a -s "-screen 0 1920x1080x24" $(PY) scripts/napari_p002_screens.py $(P002) docs/screenshots/p002

# Training and measurement (need ../shared/data; CPU works, a GPU is faster). See docs/RESULTS.md.
intensity: install   # HU window that reproduces the 8-bit MedSeg slices -> docs/INTENSITY.md
	$(PY) scripts/find_intensity_mapping.py

results: install     # 5-fold cross-validation of the five networks -> docs/cv/*.json, docs/RESULTS.md (resumable)
	$(PY) scripts/cross_validate.py

weights: install     # bundled unet + resattunet (all 50 MedSeg slices) and the demo 3D classifier
	$(PY) scripts/train_bundled.py
	$(PY) scripts/train_classifier_demo.py --overwrite

# CPU benchmarks (not part of the test run): a 300x512x512 phantom segmented end to end, napari event-loop stalls
# while segmenting and fine-tuning, fine-tune time -> benchmarks/results/*.json, docs/BENCHMARKS.md; prints the table
# with the targets met or missed. See benchmarks/README.md for options (settings sweep: run_all.py --sweep).
bench: install system-deps
	xvfb-run -a -s "-screen 0 1920x1200x24" $(PY) benchmarks/run_all.py

lint: install
	$(PY) -m ruff check src tests scripts

clean:
	rm -rf $(VENV) out build *.egg-info src/*.egg-info
