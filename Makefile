# The two commands a fresh machine needs (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test venv lint bench clean

# pip and setuptools print hundreds of warnings while building: they go to $(VENV)/install.log, shown only
# when the install fails, so the demo's hints are not buried.
$(BIN)/stratum: pyproject.toml setup.py
	@echo "installing Stratum and its dependencies into $(VENV) (about 2 minutes; log: $(VENV)/install.log)"
	@$(PYTHON) -m venv $(VENV)
	@{ $(BIN)/pip install --quiet --upgrade pip && $(BIN)/pip install --quiet -e '.[test]'; } \
		>$(VENV)/install.log 2>&1 || { tail -n 30 $(VENV)/install.log; echo "install failed: see $(VENV)/install.log"; exit 1; }
	@touch $(BIN)/stratum

venv: $(BIN)/stratum

# An example ops repo in ./demo, with stratumd in the foreground applying it to ./demo/root.
# In another terminal: edit demo/repo/infra/motd.ncl, then `git -C demo/repo commit -am "new motd"`.
demo: venv
	@rm -rf demo
	@$(BIN)/stratum init demo/repo >/dev/null
	@echo "demo/repo: an example ops repository (stratum init)"
	@echo
	@echo "stratumd applies demo/repo to demo/root. In another terminal try:"
	@echo "  sed -i 's/Welcome!/Hello!/' demo/repo/infra/motd.ncl && git -C demo/repo commit -qam 'new motd'"
	@echo "  cat demo/root/etc/motd; $(BIN)/stratum status --repo demo/repo --data-dir demo/data"
	@echo
	@$(BIN)/stratumd --repo demo/repo --data-dir demo/data --root demo/root --log-format console

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check daemon reconcilers tests bench
	$(BIN)/mypy

bench: venv
	$(BIN)/python bench/run_all.py

clean:
	rm -rf demo build dist *.egg-info
