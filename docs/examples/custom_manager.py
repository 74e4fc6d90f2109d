"""A BaseManager subclass serving a class of our own to several processes."""

import multiprocessing
from multiprocessing.managers import BaseManager


class Inventory:
    def __init__(self, owner):
        self.owner = owner
        self.stock = {}

    def add(self, item, count=1):
        self.stock[item] = self.stock.get(item, 0) + count
        return self.stock[item]

    def take(self, item):
        if self.stock.get(item, 0) == 0:
            raise KeyError(f"no {item} left")
        self.stock[item] -= 1
        return self.stock[item]

    def report(self):
        return f"{self.owner}: " + ", ".join(f"{k}={v}" for k, v in sorted(self.stock.items()))


class ShopManager(BaseManager):
    pass


ShopManager.register("Inventory", Inventory)


def deliver(inventory, item, count):
    for _ in range(count):
        inventory.add(item)


if __name__ == "__main__":
    with ShopManager() as manager:
        shop = manager.Inventory("corner shop")
        print("added:", shop.add("pencil", 5))
        print("left after one sale:", shop.take("pencil"))
        try:
            shop.take("eraser")
        except KeyError as exc:
            print("KeyError from the manager:", exc)

        deliveries = [multiprocessing.Process(target=deliver, args=(shop, item, n))
                      for item, n in [("pencil", 3), ("notebook", 4), ("ruler", 2)]]
        for p in deliveries:
            p.start()
        for p in deliveries:
            p.join(60)
        print("exit codes:", [p.exitcode for p in deliveries])
        print(shop.report())
