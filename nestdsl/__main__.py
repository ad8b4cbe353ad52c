"""`python -m nestdsl ...` (also what `torchrun -m nestdsl train ...` runs)."""

from nestdsl.cli import main

main()
