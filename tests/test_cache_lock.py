"""The encoder cache lock (filelock): concurrent embed shards fit an encoder's state one at a time."""
import threading
import time

from datacull.encoders.common import cache_lock


def test_cache_lock_serialises_holders_of_the_same_name_only(tmp_path):
    spans: dict[str, list[tuple[float, float]]] = {"same": [], "other": []}

    def hold(name: str, key: str) -> None:
        with cache_lock(tmp_path / "cache", name):
            start = time.perf_counter()
            time.sleep(0.3)
            spans[key].append((start, time.perf_counter()))

    threads = [threading.Thread(target=hold, args=("simclr-abc", "same")) for _ in range(3)]
    threads.append(threading.Thread(target=hold, args=("pixels-def", "other")))
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    same = sorted(spans["same"])
    assert len(same) == 3 and all(a[1] <= b[0] for a, b in zip(same, same[1:]))  # never two at once
    other_start = spans["other"][0][0]
    assert other_start - began < 0.25  # another name is not held up by the first
    assert (tmp_path / "cache" / ".simclr-abc.lock").exists()
