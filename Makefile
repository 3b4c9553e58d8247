# Thin wrappers around scripts/ (the scripts are the source of truth and need no make).
.PHONY: demo test lint bench ci
demo:
	scripts/demo
test:
	scripts/test
lint:
	scripts/lint
bench:
	scripts/bench
ci:
	.ci/run
