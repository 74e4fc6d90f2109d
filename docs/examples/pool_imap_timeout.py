"""imap and imap_unordered over a Pool, and AsyncResult.get(timeout) running out."""

import multiprocessing
import time


def collatz_steps(n):
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def slow_square(x):
    time.sleep(3)
    return x * x


if __name__ == "__main__":
    with multiprocessing.Pool(4) as pool:
        # imap yields in input order; imap_unordered as results finish (sort them).
        for n, steps in zip(range(1, 11), pool.imap(collatz_steps, range(1, 11), chunksize=2)):
            print(f"collatz({n}) takes {steps} steps")
        print("unordered, sorted:", sorted(pool.imap_unordered(collatz_steps, range(20, 30))))

        result = pool.apply_async(slow_square, (12,))
        try:
            result.get(timeout=0.1)
        except multiprocessing.TimeoutError:
            print("not ready after 0.1 s: TimeoutError")
        print("waiting longer gives", result.get(timeout=60))

        it = pool.imap(slow_square, [5])
        try:
            it.next(timeout=0.1)
        except multiprocessing.TimeoutError:
            print("imap's next(timeout=0.1) also raises TimeoutError")
        print("then", it.next(timeout=60))
