"""Progress bars on stderr (tqdm), or nothing when progress is off (--no-progress, tests)."""
import sys


class NoBar:
    """What a progress bar offers, doing nothing."""

    def update(self, *_, **__):
        pass

    def set_postfix_str(self, *_, **__):
        pass

    def close(self):
        pass


def progress_bar(enabled, total, desc, unit='frame'):
    """A tqdm bar on stderr (total None or 0: unknown), or NoBar when not `enabled`."""
    if not enabled:
        return NoBar()
    from tqdm import tqdm
    return tqdm(total=total or None, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
