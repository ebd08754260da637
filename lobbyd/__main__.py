from lobbyd.cli import main

raise SystemExit(main())
