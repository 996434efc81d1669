"""`python -m app`: the same command as `rag-pipeline`."""

from app.cli.main import main

raise SystemExit(main())
