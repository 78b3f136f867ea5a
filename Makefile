# Two commands on a fresh machine (Python 3.10+; the set-up is scripts/setup.sh, about 2 minutes the first time):
#   make serve    set up .venv if needed, then run the service (serve_config.yaml; checkpoint checked first)
#   make test     set up .venv if needed, then run the tests
# The set-up runs again only when pyproject.toml or scripts/setup.sh changed since it last succeeded (the stamp
# below is written by scripts/setup.sh at its end); `make setup` forces it.

VENV  := .venv
STAMP := $(VENV)/.sam2-serve-setup
CONFIG ?= serve_config.yaml

.PHONY: serve test setup

serve: $(STAMP)
	$(VENV)/bin/sam2-serve serve $(CONFIG)

test: $(STAMP)
	$(VENV)/bin/python -m pytest tests

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

setup:
	bash scripts/setup.sh
