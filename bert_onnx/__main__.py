from bert_onnx.cli import main

raise SystemExit(main())
