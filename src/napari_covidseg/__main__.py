import sys

from napari_covidseg.cli import main

sys.exit(main())
