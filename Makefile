# One command per task; each calls a script in scripts/ (which sets up .venv first).
.PHONY: setup serve test test-fast lint bench
setup:
	scripts/setup
serve:
	scripts/serve
test:
	scripts/test
test-fast:
	scripts/test-fast
lint:
	scripts/lint
bench:
	scripts/bench
