"""One package per paper (vaanet, tsl, bpmgcn): everything that paper owns. Found by name
through the registry in jaxaffect/method.py; methods never import each other."""
