"""The seed examples, run with dmp: a Pool.map and a Process."""

import os

import dmp


def f(x):
    return x * x


def info(title):
    print(title)
    print("module name:", __name__)
    print("parent process:", os.getppid())
    print("process id:", os.getpid())


def hello(name):
    info("function hello")
    print("hello", name)


if __name__ == "__main__":
    with dmp.Pool(5) as p:
        print(p.map(f, [1, 2, 3]))
    info("main line")
    proc = dmp.Process(target=hello, args=("bob",))
    proc.start()
    proc.join()
