"""A Manager's dict and list, filled in by several processes at once."""

import multiprocessing


def tally(words, counts, seen, lock):
    for word in words:
        with lock:
            counts[word] = counts.get(word, 0) + 1
        seen.append(word.upper())


if __name__ == "__main__":
    text = [
        "red green blue red".split(),
        "green green yellow".split(),
        "blue red red black".split(),
    ]
    with multiprocessing.Manager() as manager:
        counts = manager.dict()
        seen = manager.list()
        lock = manager.Lock()
        procs = [multiprocessing.Process(target=tally, args=(words, counts, seen, lock)) for words in text]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        print("counts:", dict(sorted(counts.items())))
        print("seen:", sorted(seen))
        print("len(seen) == words:", len(seen) == sum(map(len, text)))
        snapshot = counts.copy()
        print("a plain dict copy:", type(snapshot).__name__, len(snapshot))
