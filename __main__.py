from momentbus.cli import main

raise SystemExit(main())
