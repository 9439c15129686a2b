from caffelens.cli import main

raise SystemExit(main())
