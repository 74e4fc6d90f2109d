"""Lock, Event, Condition, Semaphore and Barrier shared by processes."""

import multiprocessing


def add_under_lock(lock, total, times):
    for _ in range(times):
        with lock:
            total.value += 1


def wait_for_go(go, ready, name):
    go.wait(60)
    ready.put(f"{name} saw the event")


def consume(cond, items, out):
    with cond:
        if not cond.wait_for(lambda: len(items) > 0, timeout=60):
            out.put("consumer gave up")
            return
        out.put(f"consumer took {items.pop()}")


def limited(sem, active, peak, lock, out):
    with sem:
        with lock:
            active.value += 1
            peak.value = max(peak.value, active.value)
        with lock:
            active.value -= 1
    out.put("done")


def meet(barrier, out, name):
    index = barrier.wait(60)
    out.put((name, index))


if __name__ == "__main__":
    mp = multiprocessing
    # Lock: four processes add 50 each to one shared counter.
    lock = mp.Lock()
    total = mp.Value("i", 0, lock=False)
    adders = [mp.Process(target=add_under_lock, args=(lock, total, 50)) for _ in range(4)]
    for p in adders:
        p.start()
    for p in adders:
        p.join(60)
    print("counter:", total.value)

    # Event: three processes wait until the main process sets it.
    go = mp.Event()
    ready = mp.Queue()
    waiters = [mp.Process(target=wait_for_go, args=(go, ready, f"waiter-{i}")) for i in range(3)]
    for p in waiters:
        p.start()
    print("event set before go?", go.is_set())
    go.set()
    print(sorted(ready.get(timeout=60) for _ in waiters))
    for p in waiters:
        p.join(60)

    # Condition: a consumer waits until a producer (this process) adds an item.
    manager = mp.Manager()
    cond = manager.Condition()
    items = manager.list()
    out = mp.Queue()
    consumer = mp.Process(target=consume, args=(cond, items, out))
    consumer.start()
    with cond:
        items.append("parcel")
        cond.notify_all()
    print(out.get(timeout=60))
    consumer.join(60)

    # Semaphore: at most two inside at once.
    sem = mp.Semaphore(2)
    active, peak = mp.Value("i", 0), mp.Value("i", 0)
    guard = mp.Lock()
    limited_procs = [mp.Process(target=limited, args=(sem, active, peak, guard, out)) for _ in range(5)]
    for p in limited_procs:
        p.start()
    print([out.get(timeout=60) for _ in limited_procs].count("done"), "passed the semaphore; at most 2 at once:",
          peak.value <= 2)
    for p in limited_procs:
        p.join(60)

    # Barrier: three processes meet; each gets a distinct index.
    barrier = mp.Barrier(3)
    meeters = [mp.Process(target=meet, args=(barrier, out, f"p{i}")) for i in range(3)]
    for p in meeters:
        p.start()
    met = sorted(out.get(timeout=60) for _ in meeters)
    print("met:", [name for name, _ in met], "indices:", sorted(index for _, index in met))
    for p in meeters:
        p.join(60)
    manager.shutdown()
