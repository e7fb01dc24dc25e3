# Four verbs: demo, test, book, bench. Each creates .venv when missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# CPU build of PyTorch, pinned: an unpinned `torch` pulls a multi-GB CUDA build.
TORCH   ?= torch==2.13.0

.PHONY: demo test book check-book bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	# torchattacks declares torchvision, which does not import beside the CPU torch: install it alone
	$(BIN)/python -m pip install --quiet --no-deps "torchattacks==3.5.1"
	$(BIN)/python -m pip install --quiet -e ".[dev]" "$(TORCH)"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pursamere demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

book: $(STAMP)
	$(BIN)/jupyter-book build . -W -n

# The built book in headless Chromium (Debian: apt-get install chromium chromium-driver): maths
# typeset, sliders move, no request leaves the machine; screenshots in _build/screenshots/.
check-book: book
	PURSAMERE_BOOK_HTML=_build/html $(BIN)/python -m pytest -q tests/test_book.py tests/test_browser.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_purify.py
	$(BIN)/python benchmarks/bench_attacks.py

clean:
	rm -rf _build .pytest_cache .hypothesis
