# One command per task; each calls a script in scripts/ (which sets up .venv first).
.PHONY: setup serve test lint bench
setup:
	scripts/setup
serve:
	scripts/serve
test:
	scripts/test
lint:
	scripts/lint
bench:
	scripts/bench
