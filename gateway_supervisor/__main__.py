import sys

from gateway_supervisor.stack import main

sys.exit(main())
