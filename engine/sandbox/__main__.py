from engine.sandbox.server import main

raise SystemExit(main())
