import os

# Read once, when torch loads its OpenMP runtime, so it is set here, before any module imports torch:
# a thread that waits for the others sleeps at once instead of spinning. A spinning thread holds a
# core that another process (a browser, a second search) needs, and on a busy 2-core machine that
# made a 2-thread training up to 3x slower (README, Performance). A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
