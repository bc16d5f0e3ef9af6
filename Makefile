# linkage — the two set-up commands of README.md are `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
export PYTHON := $(CURDIR)/$(PY)

.PHONY: install lock lint demo test test-fast neo4j-start neo4j-stop quality scale sensitivity ablation probes confounders clean

# the application's exact versions (with hashes) come from requirements.lock; the package itself
# is installed on top without resolving anything again
$(VENV)/.installed: pyproject.toml requirements.lock
	test -d $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --require-hashes -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m compileall -q linkage  # bytecode read, not compiled, by every run (also where PYTHONDONTWRITEBYTECODE is set)
	$(VENV)/bin/linkage warm-up  # compiles the loops once (~25 s), not in the first run
	touch $@

install: $(VENV)/.installed

lock:  ## re-resolve requirements.lock from pyproject.toml (then review the diff and run make test)
	$(PY) -m pip install -q uv
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes --quiet -o requirements.lock

lint: install  ## lint, format and type checks (also part of make test)
	$(VENV)/bin/ruff check linkage tests bench fixtures scripts
	$(VENV)/bin/ruff format --check linkage tests bench fixtures scripts
	$(VENV)/bin/mypy linkage

demo: install  ## the main job on the embedded default, on the fixture with known rings
	$(VENV)/bin/linkage run fixtures/tiny --out out/tiny
	$(VENV)/bin/linkage eval --labels fixtures/tiny_labels.csv out/tiny
	@echo "report: $(CURDIR)/out/tiny/report.html"

test: install lint  ## everything: lint and types, then the tests, the Neo4j-marked ones against a real server
	./scripts/neo4j.sh start
	set -a; . ./.neo4j/env; set +a; status=0; \
	  LINKAGE_CHROMIUM=$$(./scripts/chromium.sh) LINKAGE_REQUIRE_NEO4J=1 LINKAGE_REQUIRE_BROWSER=1 \
	  LINKAGE_ARTIFACTS=$(CURDIR)/out/ci $(PY) -m pytest -q || status=$$?; \
	  ./scripts/neo4j.sh stop; exit $$status

test-fast: install  ## unit tests only, no server
	$(PY) -m pytest -q -m "not neo4j"

neo4j-start: install
	./scripts/neo4j.sh start

neo4j-stop:
	./scripts/neo4j.sh stop

quality: install
	$(PY) bench/quality.py

scale: install
	$(PY) bench/scale.py

sensitivity: install  ## each key detection constant x0.5 and x2, on both generators
	cd bench && ../$(PY) sensitivity.py

ablation: install  ## what each optional input field is worth: worlds re-run without it
	$(PY) bench/ablation.py

probes: install  ## what an operation can change cheaply: worlds re-run with their campaigns changed
	$(PY) bench/probes.py

confounders: install  ## what customers share with no operation behind them: worlds re-run with their benign accounts changed
	$(PY) bench/confounders.py

clean:
	rm -rf out build dist *.egg-info .pytest_cache
