"""`python -m nestdsl.cli ...` = `nestdsl ...`."""

from nestdsl.cli.app import main

main()
