import sys

from xpro_mesh.cli import main

sys.exit(main())
