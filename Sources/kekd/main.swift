print("kekd")
