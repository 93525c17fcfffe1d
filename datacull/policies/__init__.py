"""Selection policies beyond the score-and-cut of Sorscher et al. (2022).

Each module registers its policies in `datacull.select.POLICIES` at import time; importing this
package (done at the end of `datacull.select`) makes them all available to `select.policy`.
"""
from datacull.policies import auto  # noqa: E402,F401  (select.policy=auto)
from datacull.policies import semdedup  # noqa: E402,F401  (select.policy=semdedup, select.dedup pre-filter)
from datacull.policies import kcenter  # noqa: E402,F401  (select.policy=kcenter)
from datacull.policies import d2  # noqa: E402,F401  (select.policy=d2)
from datacull.policies import density  # noqa: E402,F401  (select.policy=dbp, select.policy=cluster_balanced)
