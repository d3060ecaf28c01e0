from kbridge.cli.app import main

main()
