# Same two commands through make (./dev does the work; it sets up .venv on first use).
.PHONY: run test
run:
	./dev run $(ARGS)
test:
	./dev test $(ARGS)
