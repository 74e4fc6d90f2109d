"""A Pool with apply_async callbacks and error callbacks, and map_async."""

import multiprocessing


def price_with_tax(item):
    name, price = item
    if price < 0:
        raise ValueError(f"{name} has a negative price")
    return name, round(price * 1.2, 2)


if __name__ == "__main__":
    basket = [("apple", 0.5), ("bread", 2.25), ("broken", -1.0), ("cheese", 7.0), ("tea", 3.1)]
    priced = []
    failures = []

    with multiprocessing.Pool(processes=3) as pool:
        pending = [
            pool.apply_async(price_with_tax, (item,), callback=priced.append, error_callback=failures.append)
            for item in basket
        ]
        for result in pending:
            result.wait(timeout=60)
        print("successful:", sum(r.successful() for r in pending), "of", len(pending))

        totals = pool.map_async(price_with_tax, basket[:2], callback=lambda res: print("map_async callback got", res))
        totals.wait(timeout=60)

    for name, price in sorted(priced):
        print(f"{name:>8}: {price:6.2f}")
    for exc in failures:
        print("error callback:", type(exc).__name__, exc)
