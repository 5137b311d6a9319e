from ddcustom.cli import main

raise SystemExit(main())
