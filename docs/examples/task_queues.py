"""Worker processes that take tasks from one Queue and put results on another,
stopping at a sentinel."""

import multiprocessing

STOP = None


def word_stats(word):
    return word, len(word), sum(ch in "aeiou" for ch in word)


def worker(tasks, done):
    handled = 0
    for func, args in iter(tasks.get, STOP):
        done.put(func(*args))
        handled += 1
    done.put(("worker finished", handled))


if __name__ == "__main__":
    words = "the quick brown fox jumps over the lazy dog while multiprocessing".split()
    tasks = multiprocessing.Queue()
    done = multiprocessing.Queue()
    for word in words:
        tasks.put((word_stats, (word,)))

    workers = [multiprocessing.Process(target=worker, args=(tasks, done)) for _ in range(3)]
    for p in workers:
        p.start()
    for _ in workers:
        tasks.put(STOP)

    results = []
    finished = 0
    handled = 0
    while finished < len(workers):
        item = done.get(timeout=60)
        if item[0] == "worker finished":
            finished += 1
            handled += item[1]
        else:
            results.append(item)
    for p in workers:
        p.join(60)

    for word, length, vowels in sorted(results):
        print(f"{word:<16} {length:2d} letters, {vowels} vowels")
    print("tasks handled:", handled, "exit codes:", [p.exitcode for p in workers])
