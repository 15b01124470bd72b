"""cloud-info-provider's own ``main()``, run by ``.venv-cip``'s Python for the tests.

Its one call that would leave this machine — the GOCDB look-up of the site's
service (https://goc.egi.eu) — is answered with "not registered", as
cloud-info-provider itself does when GOCDB has no entry.  Everything else
(Keystone and Nova stand-ins, the real Glance) is reached over loopback.
"""

import sys

from cloud_info_provider.core import main
from cloud_info_provider.providers import utils

utils.find_in_gocdb = lambda *args, **kwargs: {}

if __name__ == "__main__":
    sys.exit(main())
