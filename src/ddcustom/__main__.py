from ddcustom.cli.main import main

raise SystemExit(main())
